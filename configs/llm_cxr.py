r"""LLM-CXR: dolly-v2-3b (GPT-NeoX) whose vocabulary grows by the VQ-GAN codebook (1,024
codes, then <image_begin> / <image_end>), so one decoder reads a chest X-ray (CXR -> report)
and draws one (report -> CXR), with no vision tower. Fully fine-tuned, Dolly prompts;
80% CXR examples (either direction) and 20% text-only instructions (dolly-15k).

  stage=1  findings + impression reports, from dolly-v2-3b
  stage=2  impression-only reports, every weight from stage 1's workdir (stage1=DIR)

  python -m data_prep.encode_codes --dataset MIMIC_DIR --codec CODEC --out MIMIC_CODES
  python main.py --config configs/llm_cxr.py:codec=CODEC --workdir runs/lc1 \
      --config.data.mixture.cxr.dir=MIMIC_CODES --config.data.mixture.text.dir=DOLLY_DIR \
      --config.data.tokenizer=DOLLY_V2_3B_DIR --config.model.llm.init_from=DOLLY_V2_3B_DIR
  python main.py --config configs/llm_cxr.py:stage=2,stage1=runs/lc1,codec=CODEC ... \
      --workdir runs/lc2
On a CPU, the embedded default (a codec first; its codes of the demo are made on first use):
  python main.py --config configs/vqgan.py:size=tiny --workdir runs/vqgan
  python main.py --config configs/llm_cxr.py:size=tiny,codec=runs/vqgan --workdir runs/lc1
  python main.py --config configs/llm_cxr.py:size=tiny,codec=runs/vqgan --workdir runs/lc1 \
      --mode=generate --prompt "Moderate left pleural effusion."     # writes a PNG
  python main.py --config configs/llm_cxr.py:size=tiny,codec=runs/vqgan --workdir runs/lc1 \
      --mode=generate --images x.png                                 # writes its report

CODEC: a vqgan workdir (configs/vqgan.py, or `python -m radjax.convert from-hf --family
vqgan`); generation encodes and decodes with it (config.codec.workdir). DOLLY_DIR:
`python -m data_prep build dolly`. At size=tiny the text share is the demo's own OpenI
report sentences as a text-only task (findings -> impression; no image shown).
Arguments: size=full|tiny|micro, stage=1|2, stage1=DIR, codec=DIR, text_share=0.2.
"""
import os

from configs import base, common
from radjax.core import workdir as workdir_lib
from radjax.eval import llm_cxr

CODEBOOK = 1024  # LLM-CXR's codec: 256 px -> 16 x 16 codes from 1,024
DOLLY_VOCAB = 50280  # dolly-v2-3b's embedding rows (### Instruction: and ### End included)


def get_config(arg: str = ''):
  args = common.parse(arg, stage=1, stage1='', codec='', text_share=0.2)
  if args.task:
    raise ValueError(f'config argument task={args.task!r}: configs/llm_cxr.py trains the '
                     "decoder alone (task 'lm') already")
  if args.stage not in (1, 2):
    raise ValueError(f'config argument stage={args.stage}: 1 or 2')
  if args.stage == 2 and not args.stage1:
    raise ValueError('config argument stage=2 needs stage1=<stage 1 workdir>')
  if args.stage1 and args.stage != 2:  # else stage 1 would train again, from dolly
    raise ValueError(f'config argument stage1={args.stage1!r}: where stage 2 starts; add '
                     'stage=2')
  if not 0.0 <= args.text_share < 1.0:
    raise ValueError(f'config argument text_share={args.text_share}: in [0, 1)')
  # config.json keeps these: absolute, the workdir serves and generates from any directory.
  args.codec, args.stage1 = (os.path.abspath(p) if p else '' for p in (args.codec, args.stage1))
  c = base.get_config()
  c.task, c.model.kind = 'lm', 'llm'
  c.seed = 42
  lm = c.model.llm  # dolly-v2-3b = Pythia-2.8B: GPT-NeoX, parallel residual, 25% rotary
  lm.embed_dim, lm.num_layers, lm.num_heads, lm.num_kv_heads, lm.mlp_dim = (
      2560, 32, 32, 32, 10240)
  lm.norm, lm.mlp, lm.activation, lm.linear_bias, lm.qkv_bias = (
      'layer', 'plain', 'gelu', True, True)
  lm.parallel_residual, lm.rotary_pct, lm.rope_theta, lm.norm_eps = True, 0.25, 10000.0, 1e-5
  lm.max_position_embeddings = 2048  # NeoX's context; what to-hf writes
  # Rows for the codes and the two delimiters; new rows start at the mean of the old.
  # LLM-CXR adds '### Response:\n' (row 50280), then the codes (code k: row 50281 + k).
  lm.vocab_size = _round_up(DOLLY_VOCAB + 1 + CODEBOOK + 2, 128)
  c.data.codebook_size = CODEBOOK
  c.data.codes_per_image = 16 * 16  # a record of another count is a data error
  c.data.chat_format = 'dolly'
  c.data.tasks = ('report_from_codes', 'codes_from_report')
  # LLM-CXR's stage 1 trains on FINDINGS + ' ' + IMPRESSION (no labels; _parse_report_fi),
  # its stage 2 on the impression alone.
  c.data.task_options.report_section = 'joined' if args.stage == 1 else 'impression'
  # MimicCxrVqDataset gives each image one direction for good (even index: CXR -> report,
  # odd: report -> CXR); radjax picks it by the record id's hash, about half each way.
  c.data.task_options.task_per_record = True
  c.data.max_len = 2048  # NeoX's context; longer examples are dropped (as LLM-CXR)
  c.data.augment = False
  c.codec.workdir = args.codec
  # 80 / 20 as LLM-CXR interleaves MIMIC and dolly; the dirs come from the command line
  # (size=tiny: the demo's codes and its report sentences).
  cxr = dict(dir='', tasks=c.data.tasks, weight=1.0 - args.text_share)
  text = dict(dir='', tasks=('instruction',), weight=args.text_share)
  c.runtime.dtype = 'bfloat16'
  c.runtime.remat.llm = 'full'  # LLM-CXR trains with gradient checkpointing
  # DeepSpeed's WarmupLR as LLM-CXR's config leaves it: a log warmup, then constant.
  c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 5e-6, 50, 1.0
  c.optim.schedule = 'log_warmup'
  c.optim.b1, c.optim.b2, c.optim.eps, c.optim.weight_decay = 0.9, 0.999, 1e-8, 0.0
  c.optim.clip_norm = 1.0
  c.optim.param_groups = (('.*', 1.0),)  # everything trained
  # 5 epochs of MIMIC-CXR-JPG train (~369k images, 80% of the mix) at batch 16.
  c.train.batch_size, c.train.num_steps = 16, 144_000
  c.train.eval_every, c.train.log_every = 1500, 50
  c.eval.evaluators = ('codes_loss', 'codes_reports')
  c.eval.max_new_tokens = 128  # LLM-CXR's CXR -> report budget
  if args.size != 'full':
    cxr, text = _tiny(c, args, cxr, text)  # greedy reports (README's measured numbers)
  else:
    # generate_eval.py reads each report through its InstructionTextGenerationPipeline's
    # defaults (training/generate.py): do_sample, top_p 0.92, top_k 0, temperature 1.
    c.eval.decoding, c.eval.top_p, c.eval.top_k, c.eval.temperature = 'sample', 0.92, 0, 1.0
  c.data.mixture.cxr = cxr
  if args.text_share:
    c.data.mixture.text = text
  if args.stage == 2:  # every weight from stage 1
    c.model.llm.init_from = args.stage1
  return c


def _round_up(n: int, k: int) -> int:
  return -(-n // k) * k


def codes_dir(codec: str) -> str:
  """Where the demo's codes made by `codec` live (built on first use)."""
  return os.path.join(codec, 'codes', os.path.basename(common.DEMO_DIR))


def _tiny(c, args, cxr: dict, text: dict) -> tuple[dict, dict]:
  if not args.codec:
    raise ValueError('configs/llm_cxr.py:size=tiny needs a codec workdir: train one with '
                     '`python main.py --config configs/vqgan.py:size=tiny --workdir '
                     'runs/vqgan` (size=micro for tests) and pass codec=runs/vqgan')
  codec = workdir_lib.load_config(args.codec)
  if codec.model.kind != 'vqgan':
    raise ValueError(f'config argument codec={args.codec!r}: a {codec.model.kind!r} workdir, '
                     'not a vqgan')
  vq = codec.model.vqgan
  grid = vq.image_size // 2 ** (len(vq.channel_mult) - 1)
  num_codes = grid * grid
  common.tiny(c)
  if args.size == 'micro':
    common.micro(c)
  c.data.builder = ''
  c.data.dir = ''  # eval reads the first component: the demo's codes
  c.data.too_long = 'drop'
  c.data.codebook_size = vq.codebook_size
  c.data.codes_per_image = num_codes
  # The codec's step is the one that made the demo's codes (its latest when they are made
  # now): a codec trained further later leaves this decoder's codes as they were.
  made = llm_cxr.codes_summary(codes_dir(args.codec))
  c.codec.step = made['step'] if made else workdir_lib.latest_step_unopened(args.codec)
  # The prompt, the delimiters and a findings + impression report (~100 tokens) or an
  # impression (~40) beside the image's codes.
  c.data.max_len = num_codes + (160 if args.stage == 1 else 96)
  # The demo tokenizer (2,048) + the dolly markers + the delimiters + the codes.
  c.model.llm.vocab_size = _round_up(2048 + 3 + 2 + vq.codebook_size, 8)
  c.codec.workdir = args.codec
  c.seed = 0
  c.optim.lr, c.optim.warmup_steps, c.optim.min_lr_ratio = 1e-3, 50, 1.0
  c.optim.weight_decay, c.optim.b2 = 0.0, 0.98
  c.train.num_steps = 300  # ~10 minutes of a 2-core CPU
  c.train.eval_every = 300
  c.train.checkpoint_every = 100
  c.train.log_every = 10
  c.eval.num_generate = 48
  c.eval.max_new_tokens = 96
  if args.size == 'micro':
    c.train.num_steps, c.train.eval_every, c.train.log_every = 20, 0, 1
    c.eval.num_generate, c.eval.max_new_tokens = 8, 16
  cxr = dict(cxr, dir=codes_dir(args.codec), builder='encode_codes',
             builder_kwargs=dict(dataset=common.DEMO_DIR, codec=args.codec,
                                 step=c.codec.step, source_builder='demo'))
  # The demo's OpenI report sentences as a text-only task (no image shown).
  text = dict(text, dir=common.DEMO_DIR, builder='demo', tasks=('impression_from_findings',))
  return cxr, text
