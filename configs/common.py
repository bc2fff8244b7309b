"""What every recipe's `get_config(arg)` shares: its arguments and the tiny form.

  --config configs/<recipe>.py:size=tiny          the recipe shrunk to the embedded
                                                  default on a CPU (big_vision's runlocal)
  --config configs/<recipe>.py:size=micro         smaller still: seconds per run (tests,
                                                  the kill/resume bench)
  --config configs/<recipe>.py:task=lm            its decoder alone, on the data's text
"""
import os

from radjax.core import defaults
from radjax.data import schema

ARGS = dict(size='full', task='')
DEMO_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'radjax', 'demo_v6')
DEMO_CT_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'radjax', 'demo_ct_v1')  # 3D


def parse(arg: str, **extra):
  """The shared arguments and a recipe's own (`extra`: name -> default)."""
  args = defaults.parse_arg(arg, **ARGS, **extra)
  if args.size not in ('full', 'tiny', 'micro'):
    raise ValueError(f"config argument size={args.size!r}: 'full', 'tiny' or 'micro'")
  if args.task not in ('', 'vlm', 'lm'):
    raise ValueError(f"config argument task={args.task!r}: 'vlm' or 'lm'")
  return args


def finish(c, args):
  """Applies the arguments to a recipe's config."""
  if args.size in ('tiny', 'micro'):
    tiny(c)
  if args.size == 'micro':
    micro(c)
  if args.task == 'lm':
    c.task = 'lm'
    c.model.kind = 'llm'
    c.data.tasks = ('report_text',)  # the reports as plain text
    c.data.chat_format = 'none'
  elif args.task == 'vlm':
    c.task, c.model.kind = 'vlm', 'vlm'
  return c


def _kv_heads(lm, heads: int) -> int:
  """Grouped-query attention (half the heads) where the family has it: GPT-NeoX (the
  LayerNorm, plain-MLP family) has none, and its tiny model must still export."""
  return heads if lm.norm == 'layer' or lm.mlp == 'plain' else heads // 2


def tiny(c):
  """Sizes and run shape for the embedded default on a 2-core CPU; architecture kinds,
  variants and the rest of the recipe stay as they are."""
  c.data.dir = DEMO_DIR
  c.data.builder = 'demo'
  c.data.builder_kwargs.seed = 0
  c.data.tokenizer = ''
  c.data.max_len = 128  # 16 image tokens + prompt + the longest reports (~80 tokens)
  c.data.max_images = 1
  # Minutes of CPU leave no room for augmentation to pay off; the tests cover it.
  c.data.augment = False
  c.data.image_mean = (0.48145466, 0.4578275, 0.40821073)
  c.data.image_std = (0.26862954, 0.26130258, 0.27577711)

  c.runtime.dtype = 'float32'  # bf16 matmuls are slow on most CPUs
  c.runtime.attention_impl = 'xla'
  c.runtime.remat.vision = c.runtime.remat.projector = c.runtime.remat.llm = 'none'
  c.runtime.unroll_scan = True  # same parameters; on a CPU the loop beats the scan
  for part in ('vision', 'projector', 'llm'):
    c.model[part].init_from = ''

  v = c.model.vision
  v.image_size, v.patch_size, v.embed_dim = 64, 16, 128
  v.num_layers, v.num_heads, v.mlp_dim = 4, 4, 384
  p = c.model.projector
  p.in_dim = p.out_dim = 0
  p.num_queries, p.hidden_dim, p.num_layers, p.num_heads, p.mlp_dim = 16, 64, 2, 2, 128
  lm = c.model.llm
  lm.vocab_size, lm.embed_dim, lm.num_layers = 2048, 128, 2
  lm.num_heads, lm.num_kv_heads, lm.head_dim, lm.mlp_dim = 4, _kv_heads(lm, 4), 0, 384
  c.model.image_token_id = -1

  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.98
  c.optim.grad_accum = 1

  c.train.num_steps = 1500
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.eval_every = 500

  c.eval.batch_size = 16
  c.eval.num_loss_batches = 8
  c.eval.num_generate = 96
  c.eval.max_new_tokens = 96
  return c


def demo_findings(c):
  """The demo renderer's five findings as label targets. It boxes each (as VinDr-CXR
  does), and the label head's token scores learn where they are: a tower trained from
  scratch needs that to see small nodules within the demo's minutes, and to put an
  enlarged heart into the patch tokens a VLM reads (with cardiomegaly learnt from the
  pooled label alone, the decoder never wrote it on an Intel Xeon: finding F1 0.0)."""
  c.data.label_names = tuple(schema.DEMO_FINDINGS.values())
  c.data.box_token_labels = c.data.label_names
  c.data.box_token_weight = 20.0


def micro(c):
  """The tiny form shrunk to seconds per run: 32 px images, 32-wide towers, 48 tokens
  (reports truncated), batch 8, one loss batch and 8 short generations per evaluation."""
  c.data.max_len = 48
  c.data.too_long = 'truncate'  # 48 tokens hold the start of a report, not all of it
  v = c.model.vision
  v.image_size, v.patch_size, v.embed_dim, v.num_layers, v.num_heads, v.mlp_dim = (
      32, 8, 32, 2, 2, 64)
  lm = c.model.llm
  lm.embed_dim, lm.num_layers, lm.num_heads, lm.num_kv_heads, lm.mlp_dim = (
      32, 2, 4, _kv_heads(lm, 4), 64)
  c.train.batch_size = 8
  c.train.log_every = 1
  c.eval.batch_size = 8
  c.eval.num_loss_batches = 1
  c.eval.num_generate = 8
  c.eval.max_new_tokens = 8
  c.eval.meteor = False
  return c
