r"""XrayGPT's model (the code's, not the paper's): EVA ViT-g/14 (frozen) -> BLIP-2 Q-Former
(frozen) -> a linear to the LLM width (the only trained part) -> Vicuna-7B (frozen).

  stage=1  image straight before its caption, no prompt (MIMIC filter_cap summaries)
  stage=2  instructions in Vicuna's '###' turns (OpenI summaries), every part starting
           from stage 1's workdir (stage1=DIR)

  python main.py --config configs/xraygpt.py --workdir runs/xg1 \
      --config.data.dir=MIMIC_CAPTIONS_DIR --config.data.tokenizer=VICUNA_DIR \
      --config.model.vision.init_from=BLIP2_DIR --config.model.projector.init_from=BLIP2_DIR \
      --config.model.llm.init_from=VICUNA_DIR
  python main.py --config configs/xraygpt.py:stage=2,stage1=runs/xg1 --workdir runs/xg2 \
      --config.data.dir=OPENI_CAPTIONS_DIR --config.data.tokenizer=VICUNA_DIR
On a CPU, the embedded default (RadVicuna, then stages 1 and 2):
  python main.py --config configs/xraygpt.py:size=tiny,task=lm --workdir runs/xg0
  python main.py --config configs/xraygpt.py:size=tiny,llm=runs/xg0 --workdir runs/xg1
  python main.py --config configs/xraygpt.py:size=tiny,stage=2,stage1=runs/xg1 --workdir runs/xg2

BLIP2_DIR: an HF BLIP-2 directory or LAVIS's blip2 .pth (vision + Q-Former); the caption
sets come from `python -m data_prep build xraygpt_captions`. The text-only "RadVicuna"
step is `task=lm` (the decoder alone on text conversations, e.g. the dolly builder).
Arguments: size=full|tiny|micro, task=vlm|lm, stage=1|2, stage1=DIR, llm=DIR (init_from).
"""
from configs import base, common


def get_config(arg: str = ''):
  args = common.parse(arg, stage=1, stage1='', llm='')
  if args.stage not in (1, 2):
    raise ValueError(f'config argument stage={args.stage}: 1 or 2')
  if args.stage == 2 and not args.stage1:
    raise ValueError('config argument stage=2 needs stage1=<stage 1 workdir>')
  if args.stage1 and args.stage != 2:  # else stage 1 would train again, from scratch
    raise ValueError(f'config argument stage1={args.stage1!r}: where stage 2 starts; add '
                     'stage=2')
  if args.llm and args.stage == 2:  # stage 2's decoder is stage 1's
    raise ValueError(f'config argument llm={args.llm!r}: stage 2 starts every part, the '
                     'decoder too, from stage1=; leave llm out')
  c = base.get_config()
  v = c.model.vision
  v.variant, v.image_size, v.patch_size = 'eva', 224, 14
  v.embed_dim, v.num_layers, v.num_heads, v.mlp_dim = 1408, 39, 16, 6144
  v.norm_eps, v.select_layer, v.keep_class_token = 1e-6, -1, True
  p = c.model.projector
  p.kind = 'qformer'  # BERT-base sized, 32 queries, cross-attention every 2nd layer
  p.num_queries, p.hidden_dim, p.num_layers, p.num_heads, p.mlp_dim = 32, 768, 12, 12, 3072
  p.cross_attention_every, p.norm_eps = 2, 1e-12
  lm = c.model.llm  # Vicuna v1 7B; <image> is the one added token
  lm.vocab_size, lm.embed_dim, lm.num_layers, lm.num_heads, lm.num_kv_heads = (
      32001, 4096, 32, 32, 32)
  lm.mlp_dim, lm.norm_eps, lm.rope_theta = 11008, 1e-6, 10000.0
  lm.max_position_embeddings = 2048  # LLaMA-1's; what to-hf writes
  c.optim.param_groups = (('projector/out/.*', 1.0), ('.*', 'frozen'))
  c.optim.b2, c.optim.weight_decay = 0.999, 0.05
  c.data.crop_scale = (0.5, 1.0)
  c.data.max_len = 32 + 224  # image queries + prompt + up to 160 caption tokens
  c.runtime.dtype = 'bfloat16'
  if args.stage == 1:
    c.data.tasks, c.data.chat_format = ('report_text',), 'none'
    # llama_proj starts new (MiniGPT4.__init__ builds it after loading BLIP-2's weights):
    # a BLIP-2 init_from gives the Q-Former, not its projection into T5 / OPT.
    c.model.projector.init_fresh = 'out/.*'
    c.optim.lr, c.optim.min_lr_ratio, c.optim.warmup_steps = 1e-4, 0.8, 500
    c.train.num_steps, c.train.batch_size = 20000, 12
  else:
    c.data.tasks, c.data.chat_format = ('report',), 'vicuna'
    c.optim.lr, c.optim.min_lr_ratio, c.optim.warmup_steps = 3e-5, 1 / 3, 200
    c.train.num_steps, c.train.batch_size = 2500, 4
  c.eval.evaluators = ('loss', 'reports')
  c = common.finish(c, args)
  if args.size != 'full':
    c.model.vision.variant = 'eva'  # tiny keeps the tower's kind, shrinks its sizes
    # 16 image queries + the demo's reports (up to ~100 tokens); stage 2 adds Vicuna's
    # system prompt and the request; RadVicuna reads whole conversations.
    c.data.max_len = {1: 112, 2: 176}[args.stage] if args.task != 'lm' else 240
    c.train.num_steps = 300 if args.stage == 1 else 200
    c.optim.warmup_steps = 30
    c.optim.lr = 1e-3 if args.stage == 1 else 3e-4
    c.train.eval_every = c.train.num_steps // 2
  if args.llm:
    c.model.llm.init_from = args.llm
  if args.stage == 2:  # every part from stage 1: frozen ones stay bit-identical
    for part in ('vision', 'projector', 'llm'):
      c.model[part].init_from = args.stage1
  if args.task == 'lm':  # RadVicuna: the decoder on radiology text, fully trained
    c.data.tasks = ('conversation', 'instruction', 'report_text')
    c.data.chat_format = 'vicuna'
    c.optim.param_groups = (('.*', 1.0),)
    c.eval.evaluators = ('loss',)
  elif args.size == 'full':
    as_xraygpt_ran(c, args.stage)
  return c


def as_xraygpt_ran(c, stage: int):
  """What XrayGPT's code does at full size (train_configs/xraygpt_{mimic_pretrain,
  openi_finetune}.yaml, xraygpt/models/mini_gpt4.py, xraygpt/common/optims.py). size=tiny
  keeps the demo's own settings (README's measured numbers)."""
  # filter_cap.json's summaries are the answer as they are (the xraygpt_captions build
  # keeps them as findings), not 'Findings: ...'.
  c.data.task_options.report_section = 'findings'
  c.data.intensity_jitter = False  # blip2_image_train: RandomResizedCrop(0.5-1) alone
  # Captions are cut at max_txt_len tokens, end_sym included (stage 1: the code's default
  # 32, end_sym '\n'; stage 2: 160, '###'), not dropped.
  c.data.too_long = 'truncate'
  if stage == 1:
    c.data.chat_format = 'caption'  # end_sym '\n', no EOS
    # BOS, 32 queries, 32 caption tokens: 65 ids, i.e. 64 inputs and 64 targets.
    c.data.max_len, c.data.max_target_tokens = 64, 32
  else:
    c.data.max_len, c.data.max_target_tokens = 288, 160  # the prompt (~70) + 160
    c.data.loss_norm = 'example'  # batch_size_train 1 per GPU: each caption's token mean
    c.train.num_steps = 2501  # max_epoch 1 x iters_per_epoch 2501
  # LAVIS: AdamW without gradient clipping; linear warmup from warmup_lr 1e-6, then the
  # cosine of the whole run (linear_warmup_cosine_lr).
  c.optim.clip_norm = 0.0
  c.optim.schedule, c.optim.warmup_init_lr = 'lavis', 1e-6
  # MiniGPT4.test (test.py) and Chat.answer (demo.py): nucleus sampling, top_p 0.9,
  # temperature 1.0, up to 300 new tokens, stopped at '###'. Neither passes top_k, so
  # transformers' default of 50 applies before the nucleus (Vicuna sets none of its own).
  c.eval.decoding, c.eval.top_p, c.eval.temperature = 'sample', 0.9, 1.0
  c.eval.top_k = 50
  c.eval.max_new_tokens = 300
