r"""RadVLM's model: SigLIP so400m/14-384 -> 2-layer GELU MLP -> Qwen2-7B, fully fine-tuned
(the vision tower at a fifth of the learning rate) in ChatML on a multi-task mixture:
reports, abnormality classification, grounding, detection, conversations.

  python main.py --config configs/radvlm.py --workdir runs/radvlm \
      --config.data.tokenizer=QWEN2_DIR \
      --config.model.vision.init_from=SIGLIP_DIR --config.model.llm.init_from=QWEN2_DIR \
      --config.data.mixture.reports.dir=MIMIC_DIR --config.data.mixture.chexpert.dir=CHEXPERT_DIR \
      --config.data.mixture.vindr.dir=VINDR_DIR --config.data.mixture.phrases.dir=MS_CXR_DIR \
      --config.data.mixture.conversations.dir=LLAVA_JSON_DIR
  python main.py --config configs/radvlm.py:size=tiny --workdir runs/radvlm_tiny   # a CPU

One 384-pixel tile per image (729 tokens): LLaVA-OneVision's AnyRes tiling is not
built. Data dirs come from `python -m data_prep build <name>` (mimic_cxr, chexpert,
vindr_cxr, ms_cxr, llava_json, ...). At size=tiny every component reads the embedded
default, whose records carry labels, nodule boxes and short conversations.
Arguments: size=full|tiny|micro, task=vlm|lm.
"""
import ml_collections

from configs import base, common

# component -> (instruction tasks, weight, repeat); weights are of the full recipe's
# ~1.1M examples, small grounding sets repeated 2-4x as RadVLM does.
MIXTURE = {
    'reports': (('report',), 0.40, 1),
    'chexpert': (('classification',), 0.38, 1),
    'vindr': (('abnormality_grounding', 'detection'), 0.08, 3),
    'phrases': (('phrase_grounding',), 0.01, 3),
    'conversations': (('conversation',), 0.13, 1),
}


def get_config(arg: str = ''):
  args = common.parse(arg)
  c = base.get_config()
  v = c.model.vision
  v.variant, v.image_size, v.patch_size = 'siglip', 384, 14
  v.embed_dim, v.num_layers, v.num_heads, v.mlp_dim = 1152, 26, 16, 4304
  v.norm_eps, v.select_layer = 1e-6, -1
  c.model.projector.kind = 'mlp'
  lm = c.model.llm  # Qwen2-7B-Instruct
  lm.vocab_size, lm.embed_dim, lm.num_layers, lm.num_heads, lm.num_kv_heads = (
      152064, 3584, 28, 28, 4)
  lm.mlp_dim, lm.norm_eps, lm.rope_theta, lm.qkv_bias = 18944, 1e-6, 1e6, True
  c.data.image_mean = c.data.image_std = (0.5, 0.5, 0.5)
  c.data.chat_format = 'chatml'
  c.data.task_options.uncertain_as = 1  # RadVLM counts uncertain findings as present
  c.data.max_len = 4096
  c.data.mixture = ml_collections.ConfigDict({
      name: dict(dir='', tasks=tasks, weight=weight, repeat=repeat)
      for name, (tasks, weight, repeat) in MIXTURE.items()})
  c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 1e-5, 130, 0.0
  c.optim.weight_decay, c.optim.b2 = 0.0, 0.999
  c.optim.param_groups = (('vision/.*', 0.2), ('.*', 1.0))
  c.train.batch_size, c.train.num_steps = 256, 4355  # one epoch of ~1.1M examples
  c.runtime.dtype, c.runtime.attention_impl = 'bfloat16', 'cudnn'
  c.runtime.remat.llm = c.runtime.remat.vision = 'qkv_and_attention_out'
  c.eval.evaluators = ('loss', 'reports', 'classification', 'grounding', 'vqa')
  c.eval.max_new_tokens = 200
  c = common.finish(c, args)
  if args.size != 'full':
    c.model.vision.variant = 'siglip'
    c.data.image_mean = c.data.image_std = (0.5, 0.5, 0.5)
    c.model.llm.vocab_size = 2048 + 64  # ChatML's two markers join the demo's 2048
    c.data.max_len = 160
    # Every component reads the embedded default; small tasks weigh more than in the
    # full mix so that each is learnt in minutes.
    tiny_mix = {'reports': 0.35, 'chexpert': 0.2, 'vindr': 0.2, 'phrases': 0.1,
                'conversations': 0.15}
    for name, comp in c.data.mixture.items():
      comp.dir, comp.weight = c.data.dir, tiny_mix[name]
    c.data.mixture.vindr.tasks = ('abnormality_grounding',)  # the demo's boxes: nodules
    c.data.mixture.phrases.tasks = ('vqa',)  # no phrase boxes in the demo: closed questions
    c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 1e-3, 50, 0.1
  if args.task == 'lm':
    c.data.mixture = ml_collections.ConfigDict()
    c.data.tasks = ('conversation', 'instruction', 'report_text')
    c.eval.evaluators = ('loss',)
  return c
