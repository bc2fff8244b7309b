r"""radjax's train step vs HF transformers + torch on the same LLaVA-style model, one process.

  python bench/vs_hf_train.py --config configs/demo.py [--sizes demo,43m,100m] [--steps 10] \
      [--compile] [--config.train.batch_size=8 ...]
  python bench/vs_hf_train.py --config configs/llava_tinyllama.py --sizes config [--compile]
  python bench/vs_hf_train.py --config configs/llava_tinyllama.py --sizes config --dry
  python bench/vs_hf_train.py --config configs/demo.py --sizes 43m --isolate  # a process per side
  python bench/vs_hf_train.py --config configs/llava_tinyllama.py --sizes config --compile \
      --isolate --one_at_a_time --lead 0   # GPU: radjax's, then HF's, each with the GPU alone

radjax: setup.build + setup.jit_train_step (as bench/train_step.py). HF:
`LlavaForConditionalGeneration` built locally from the same shapes (CLIP tower, 2-layer MLP
projector, LLaMA decoder; radjax/convert gives it the radjax initial weights, so the first
losses agree), masked next-token cross-entropy, gradient clipping at config.optim.clip_norm,
`torch.optim.AdamW` (decay on matrices only, as radjax's kernels-only decay); eager and,
with --compile, `torch.compile` of forward + loss. Same batch, sequence length, image
tokens and compute dtype: float32 params, bf16 autocast when config.runtime.dtype is
bfloat16 (radjax: f32 master weights, bf16 compute). The sides step in turn, so a busy
machine slows all of them alike; in each round every side takes --lead untimed steps and
then its timed one, so that the timed step follows a step of its own, as steps do in
training (bench/idle_gap.py shows why); the table gives the median.
Modules the config freezes (config.optim.param_groups, e.g. the demo's vision tower) are
frozen on the HF side too (requires_grad=False, as LLaVA's recipes do). With
config.data.max_target_tokens the loss covers the last that many tokens of each row, and
radjax computes logits there only (HF, as its users run it, everywhere).

Sizes: `demo` / `config` = the config as given; `43m` and `100m` change the widths (see
SIZES). A config with an auxiliary label head (configs/demo.py:
config.data.label_loss_weight=1) is timed twice on the radjax side: as run (with the head)
and without it (the same function as HF's). --dry builds nothing but abstract shapes and
a meta-device HF model: parameter counts of both sides, no step.
"""
import os
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # torch shares the GPU
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import hf_twin, isolated_sides, train_step  # noqa: E402
from radjax import tasks  # noqa: E402
from radjax.core import host_memory, sharding  # noqa: E402
from radjax.train import optimizer, setup  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (not at import: the tests import both scripts)."""
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('sizes', ['demo'], "Model sizes: 'demo'/'config' (the config as given), "
                    "'43m', '100m'.")
  flags.DEFINE_integer('steps', 10, 'Timed rounds (one timed step per side each) after warm-up.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps per side first (compiles).')
  flags.DEFINE_integer('lead', 1, 'Untimed steps of a side right before each of its timed '
                       'steps, so that the timed step follows a step of its own, as in '
                       "training (0: every timed step follows the other sides').")
  flags.DEFINE_bool('compile', False, 'Also time HF with torch.compile (forward + loss).')
  flags.DEFINE_bool('dry', False, 'Shapes and parameter counts only; no step runs.')
  flags.DEFINE_float('peak_tflops', 0.0, "Peak dense TFLOP/s of the device (989: H100/H200 "
                     "SXM bf16); adds each side's MFU. 0: no MFU column.")
  flags.DEFINE_bool('hf_grad_ckpt', False, 'HF gradient checkpointing (whole layers).')
  flags.DEFINE_string('hf_attn', 'sdpa', "HF attn_implementation ('sdpa', 'eager', ...).")
  flags.DEFINE_integer('torch_threads', 0, 'torch intra-op threads (0: its default, the '
                       'core count); 1 is faster on a CPU other jobs share.')
  flags.DEFINE_bool('isolate', False, 'Each side in a process of its own, still stepped in '
                    'turn (bench/isolated_sides.py).')
  flags.DEFINE_bool('one_at_a_time', False, "--isolate, with radjax's sides in one process, "
                    "HF's in another, the second started when the first has ended, so each "
                    "has the device's memory to itself (an 80 GB GPU holds radjax's or HF's "
                    "full-size llava_tinyllama step, not both).")
  flags.DEFINE_string('worker_size', '', 'Internal (--isolate): the size this worker builds.')
  flags.DEFINE_list('worker_sides', [], 'Internal (--isolate): the sides this worker keeps.')


IMAGE_TOKEN_ID = 4  # no tokenizer here: synthetic batches

# name -> (vision, llm, data/train) overrides. 43m: the shape (224 px / patch 16, 6
# vision + 8 LLM layers, batch 4 x 512 tokens), ViT-S/16 widths and a 512-wide decoder:
# 43.47M parameters. 100m: the same family, wider and deeper: 102.21M.
SIZES = {
    '43m': (dict(image_size=224, patch_size=16, embed_dim=384, num_layers=6, num_heads=6,
                 mlp_dim=1536),
            dict(vocab_size=8192, embed_dim=512, num_layers=8, num_heads=8, num_kv_heads=4,
                 mlp_dim=1408),
            dict(batch_size=4, max_len=512)),
    '100m': (dict(image_size=224, patch_size=16, embed_dim=512, num_layers=8, num_heads=8,
                  mlp_dim=2048),
             dict(vocab_size=8192, embed_dim=768, num_layers=10, num_heads=12, num_kv_heads=4,
                  mlp_dim=2048),
             dict(batch_size=4, max_len=512)),
}


def sized(config, size: str):
  """A copy of `config` at `size` (SIZES, or the config as given)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    if c.model.image_token_id < 0:
      c.model.image_token_id = IMAGE_TOKEN_ID
    c.data.pixels = 'float32'  # both sides take the synthetic batch's float pixels
    if size in ('demo', 'config'):
      return c
    if size not in SIZES:
      raise ValueError(f'--sizes: {size!r} is not demo, config or one of {sorted(SIZES)}')
    vision, llm, run = SIZES[size]
    c.model.vision.update(vision)
    c.model.llm.update(llm)
    c.train.batch_size, c.data.max_len = run['batch_size'], run['max_len']
    # A generic model of that size: everything trained, logits at every position.
    c.optim.param_groups = (('.*', 1.0),)
    c.data.max_target_tokens = 0
  return c


def frozen_modules(exp) -> list[str]:
  """radjax's top-level modules whose every parameter is in a frozen group (the HF side
  freezes the same); a module frozen only in part has no HF counterpart here."""
  labels = optimizer.param_labels(exp.state.params, exp.config.optim.param_groups)
  out = []
  for name, sub in labels.items():
    frozen = {lab == optimizer.FROZEN for lab in jax.tree.leaves(sub)}
    if frozen == {True, False}:
      raise ValueError(f'config.optim.param_groups freezes part of {name!r}: the HF side '
                       'cannot follow')
    if frozen == {True}:
      out.append(name)
  return out


def without_label_head(config):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.data.label_loss_weight = c.data.box_token_weight = 0.0
  return c


def synthetic_batch(config, tokens_per_image: int, num_labels: int, seed: int = 0) -> dict:
  """One batch of the vlm task's spec: row = BOS, the image placeholders of every image
  slot, random text ids (10..999); loss on the text (its last config.data.max_target_tokens
  when set); random images and labels."""
  rng = np.random.default_rng(seed)
  b, t, m = config.train.batch_size, config.data.max_len, config.data.max_images
  v = config.model.vision
  n_img = tokens_per_image * m
  if n_img + 2 > t:
    raise ValueError(f'config.data.max_len={t} cannot hold {n_img} image tokens')
  hi = min(1000, config.model.llm.vocab_size)
  tokens = rng.integers(10, hi, (b, t)).astype(np.int32)
  tokens[:, 0] = hf_twin.BOS
  tokens[:, 1:1 + n_img] = config.model.image_token_id
  targets = np.concatenate([tokens[:, 1:], rng.integers(10, hi, (b, 1))], 1).astype(np.int32)
  loss_mask = np.ones((b, t), np.float32)
  loss_mask[:, :1 + n_img] = 0
  if config.data.get('max_target_tokens', 0):  # a report after a prompt: radjax's logits
    loss_mask[:, :t - config.data.max_target_tokens] = 0  # there only, HF's everywhere
  batch = {'tokens': tokens, 'targets': targets, 'loss_mask': loss_mask,
           'images': rng.normal(size=(b, m, v.image_size, v.image_size, v.num_channels)
                                ).astype(np.float32),
           'image_mask': np.ones((b, m), bool)}
  if num_labels:
    batch['labels'] = (rng.random((b, num_labels)) < 0.3).astype(np.float32)
    batch['label_mask'] = np.ones((b,), np.float32)
  return batch


def radjax_side(config, batch: dict, label: str, compiler_options: dict | None = None) -> dict:
  """A side: its name, parameter count, one-step callable (blocks until done), first loss.
  compiler_options: XLA options for this side's compile (bench/xla_options.py)."""
  exp = setup.build(config, tasks.TASKS['vlm'](config, None))
  spec = exp.task.batch_spec()
  b = len(batch['tokens'])
  rng = np.random.default_rng(1)  # fields only this side reads (the box targets): sparse 0/1
  arrays = {k: jax.device_put(batch[k] if k in batch else
                              (rng.random((b, *f.shape)) < 0.1).astype(f.dtype),
                              exp.batch_shardings[k]) for k, f in spec.items()}
  with sharding.activation_rules(exp.mesh, exp.rules):
    step = setup.jit_train_step(exp)
    if compiler_options:
      step = step.lower(exp.state, arrays).compile(compiler_options=compiler_options)
  box = {'state': exp.state}

  def run():
    with sharding.activation_rules(exp.mesh, exp.rules):
      box['state'], metrics = step(box['state'], arrays)
    return jax.block_until_ready(metrics)

  return dict(name=label, params=hf_twin.count_jax(exp.state.params), run=run,
              first_loss=lambda: float(run()['loss']), exp=exp)


def hf_loss_fn(model, autocast_dtype, device: str):
  """(input_ids, pixel_values, targets, mask) -> mean masked next-token cross-entropy."""
  def loss_fn(input_ids, pixel_values, targets, mask):
    with torch.autocast(device_type=device, dtype=autocast_dtype,
                        enabled=autocast_dtype != torch.float32):
      logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction='none')
    return (nll * mask.flatten()).sum() / mask.sum().clamp(min=1)
  return loss_fn


def hf_optimizer(model, optim):
  """AdamW as radjax's: decoupled decay on matrices only, the same betas/eps/lr; frozen
  parameters left out."""
  trained = [p for p in model.parameters() if p.requires_grad]
  decay = [p for p in trained if p.ndim >= 2]
  rest = [p for p in trained if p.ndim < 2]
  fused = {'fused': True} if next(model.parameters()).is_cuda else {}
  return torch.optim.AdamW([{'params': decay, 'weight_decay': optim.weight_decay},
                            {'params': rest, 'weight_decay': 0.0}],
                           lr=optim.lr, betas=(optim.b1, optim.b2), eps=optim.eps, **fused)


GRAPH_BREAK_NAME = 'HF torch.compile (graph break)'


def compile_loss(loss_fn, on_fallback=lambda: None):
  """torch.compile of `loss_fn`, as one graph where this torch allows it.

  Llava's placeholder check formats a token count into its message (an .item()). Captured
  as a symbolic scalar (capture_scalar_outputs), the forward stays one graph on torch 2.13;
  torch 2.11, the GPU image's, fails to compile that graph (an unbacked size from
  masked_scatter). Then the first call compiles it again with a graph break at the count,
  and `on_fallback` is called."""
  torch._dynamo.config.capture_scalar_outputs = True
  state = dict(fn=torch.compile(loss_fn), first=True)

  def call(*args):
    if not state['first']:
      return state['fn'](*args)
    state['first'] = False
    try:
      return state['fn'](*args)
    except torch._dynamo.exc.TorchDynamoException as e:
      print(f'torch.compile of the one-graph forward failed ({type(e).__name__}); '
            'compiling it with a graph break at the placeholder count', flush=True)
      torch._dynamo.reset()
      torch._dynamo.config.capture_scalar_outputs = False
      state['fn'] = torch.compile(loss_fn)
      on_fallback()
      return state['fn'](*args)
  return call


def hf_side(config, vlm_cfg, params, batch: dict, device: str, attn: str = 'sdpa',
            grad_ckpt: bool = False, eager: dict | None = None, frozen=()) -> dict:
  """The HF eager side, its `frozen` modules (radjax names) frozen; given `eager` (that
  side), the torch.compile side on the same model and optimizer (one copy of the weights
  on the device; its step-0 loss is not taken)."""
  if eager is None:
    model = hf_twin.hf_llava(vlm_cfg, params, device, config.data.max_len, attn)
    hf_twin.freeze(model, frozen)
    if grad_ckpt:  # whole-layer recompute (radjax's configs save q/k/v/attention_out)
      model.gradient_checkpointing_enable()
    model.train()
    opt = hf_optimizer(model, config.optim)
  else:
    model, opt = eager['model'], eager['opt']
  side = dict(name='HF eager' if eager is None else 'HF torch.compile')
  loss_fn = hf_loss_fn(model, hf_twin.torch_dtype(config.runtime.dtype), device)
  if eager is not None:
    loss_fn = compile_loss(loss_fn, lambda: side.update(name=GRAPH_BREAK_NAME))
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(device)
  images = batch['images'].reshape(-1, *batch['images'].shape[2:]).transpose(0, 3, 1, 2)
  inputs = (t(batch['tokens']).long(), t(images), t(batch['targets']).long(),
            t(batch['loss_mask']))

  def run():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(*inputs)
    loss.backward()
    if config.optim.clip_norm:
      torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                     config.optim.clip_norm)
    opt.step()
    hf_twin.sync(device)
    return loss

  def first_loss():
    loss = run()
    return float(loss.item()) if eager is None else None  # compile: eager stepped first

  side.update(params=hf_twin.count_torch(model), run=run, first_loss=first_loss, model=model,
              opt=opt)
  return side


def build_sides(config, size: str, compiled: bool = False, attn: str = 'sdpa',
                label_head: bool = True, grad_ckpt: bool = False, hf: bool = True):
  """(sized config, batch, sides) of one size, nothing stepped yet; the radjax side
  without the label head first. label_head=False leaves the as-run radjax side out,
  hf=False the HF sides (which come last)."""
  cfg = sized(config, size)
  with_head = label_head and cfg.data.get('label_loss_weight', 0.0) > 0
  plain = without_label_head(cfg)
  task = tasks.TASKS['vlm'](cfg, None)
  batch = synthetic_batch(cfg, task.model_cfg.tokens_per_image, task.model_cfg.num_labels)
  sides = [radjax_side(plain, batch, 'radjax, no label head' if with_head else 'radjax')]
  if with_head:
    sides.append(radjax_side(cfg, batch, 'radjax + label head (as run)'))
  if not hf:
    return cfg, batch, sides
  plain_cfg = sides[0]['exp'].task.model_cfg
  params = sides[0]['exp'].state.params
  device = hf_twin.torch_device()
  sides.append(hf_side(plain, plain_cfg, params, batch, device, attn, grad_ckpt,
                       frozen=frozen_modules(sides[0]['exp'])))
  if compiled:
    sides.append(hf_side(plain, plain_cfg, params, batch, device, attn, eager=sides[-1]))
  return cfg, batch, sides


def run_sides(cfg, size: str, sides, steps: int, warmup: int = 2, lead: int = 0
              ) -> list[dict]:
  """Steps the sides in turn (first loss, warm-up, `steps` timed rounds, each side's
  timed step after `lead` untimed ones of its own); one result dict per side."""
  device = hf_twin.torch_device()
  for s in sides:  # before any step: every side starts from the same weights
    s['loss0'] = s['first_loss']()
    for _ in range(warmup - 1):
      s['run']()
  times = step_in_turn([s['run'] for s in sides], steps, lead,
                       lambda run: hf_twin.timed(run, lambda: hf_twin.sync(device)))
  fields = row_fields(cfg, sides)
  return with_ratios([dict(size=size, side=s['name'], params=s['params'],
                           times=ts, loss0=s['loss0'], **fields)
                      for s, ts in zip(sides, times)])


def step_in_turn(runs, steps: int, lead: int, timed) -> list[list[float]]:
  """`steps` rounds; in each, every run in turn steps `lead` times untimed, then once
  timed by `timed(run)`. The times, per run.

  On a VM whose host reclaims guest memory left free (free page reporting), a side whose
  step frees its temporaries gets them back cold after the other sides' steps, a cost that
  back-to-back training steps never pay (BENCHMARKS.md, session 18); `lead` steps keep the
  timed step warm."""
  times = [[] for _ in runs]
  for _ in range(steps):
    for run, ts in zip(runs, times):
      for _ in range(lead):
        run()
      ts.append(timed(run))
  return times


def row_fields(cfg, sides) -> dict:
  """The fields of a result row that the config and the built sides fix; `flops`: the
  analytic training FLOPs of a step (bench/train_step.py's count; every side computes the
  same function, frozen towers forward only)."""
  exp = sides[0]['exp']
  return dict(shape=f'{cfg.train.batch_size} x {cfg.data.max_len}',
              image_tokens=exp.task.model_cfg.tokens_per_image * cfg.data.max_images,
              dtype=cfg.runtime.dtype, tokens=cfg.train.batch_size * cfg.data.max_len,
              flops=train_step.analytic_flops(cfg, exp.state.params, exp.labels)['total'])


def with_ratios(rows: list[dict]) -> list[dict]:
  """Adds each side's median step, tokens/s and its ratios to HF eager."""
  for r in rows:
    r['step_s'] = hf_twin.median(r['times'])
    r['tokens_per_s'] = r['tokens'] / r['step_s']
    r['tflops_per_s'] = r['flops'] / r['step_s'] / 1e12
  eager = next(r for r in rows if r['side'] == 'HF eager')
  for r in rows:
    r['vs_hf'] = eager['step_s'] / r['step_s']
    r['params_vs_hf'] = r['params'] / eager['params'] - 1
  return rows


def num_sides(config, size: str, compiled: bool) -> int:
  """How many sides build_sides makes (without building them)."""
  with_head = sized(config, size).data.get('label_loss_weight', 0.0) > 0
  return 2 + with_head + compiled


def first_hf_side(config, size: str, compiled: bool) -> int:
  """build_sides puts HF eager (and torch.compile) last."""
  return num_sides(config, size, compiled) - 1 - compiled


def side_groups(config, size: str, compiled: bool, one_at_a_time: bool) -> list[list[int]]:
  """The --isolate workers' sides: one each, or radjax's together and HF's together."""
  n, first_hf = num_sides(config, size, compiled), first_hf_side(config, size, compiled)
  if not one_at_a_time:
    return [[i] for i in range(n)]
  return [list(range(first_hf)), list(range(first_hf, n))]


def worker_build(config, size: str, compiled: bool, attn: str, grad_ckpt: bool, hf: bool):
  """What an --isolate worker builds: (row_fields, sides); the HF sides only if `hf`
  (a worker keeping only radjax's sides does without the twin)."""
  cfg, _, sides = build_sides(config, size, compiled, attn, grad_ckpt=grad_ckpt, hf=hf)
  return row_fields(cfg, sides), sides


def compare(config, size: str, steps: int, warmup: int = 2, compiled: bool = False,
            attn: str = 'sdpa', grad_ckpt: bool = False, lead: int = 0) -> list[dict]:
  """Every side of one size, built and stepped in turn; one result dict per side."""
  cfg, _, sides = build_sides(config, size, compiled, attn, grad_ckpt=grad_ckpt)
  return run_sides(cfg, size, sides, steps, warmup, lead)


def dry(config, size: str) -> dict:
  """Parameter counts of both sides from shapes alone (the full config on any machine)."""
  cfg = without_label_head(sized(config, size))
  with cfg.unlocked():
    if cfg.runtime.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
      cfg.runtime.attention_impl = 'xla'  # shapes only; the GPU run uses cudnn
  exp = setup.build(cfg, tasks.TASKS['vlm'](cfg, None), train=False)
  ours = hf_twin.count_jax(exp.state.params)
  model = hf_twin.hf_llava(exp.task.model_cfg, None, 'meta', cfg.data.max_len)
  theirs = hf_twin.count_torch(model)
  batch = synthetic_batch(cfg, exp.task.model_cfg.tokens_per_image, 0)
  shapes = {k: v.shape for k, v in batch.items()}
  return dict(size=size, radjax=ours, hf=theirs, shapes=shapes, dtype=cfg.runtime.dtype,
              image_tokens=exp.task.model_cfg.tokens_per_image * cfg.data.max_images)


def table(rows: list[dict], peak_tflops: float = 0.0) -> str:
  """The markdown table; with `peak_tflops`, each side's MFU against it."""
  headers = ['size', 'side', 'params', 'batch x seq', 'image tokens', 'dtype',
             'step (median)', 'tokens/s', 'TFLOP/s', 'speed vs HF eager', 'loss at step 0']
  if peak_tflops:
    headers.insert(9, f'MFU of {peak_tflops:g}')
  body = []
  for r in rows:
    body.append([r['size'], r['side'],
                 f"{r['params'] / 1e6:.2f}M ({100 * r['params_vs_hf']:+.2f} %)",
                 r['shape'], r['image_tokens'], r['dtype'], f"{r['step_s'] * 1e3:,.1f} ms",
                 f"{r['tokens_per_s']:,.0f}", f"{r['tflops_per_s']:.3g}", f"{r['vs_hf']:.2f}x",
                 '-' if r['loss0'] is None else f"{r['loss0']:.4f}"])
    if peak_tflops:
      body[-1].insert(9, f"{100 * r['tflops_per_s'] / peak_tflops:.1f} %")
  return hf_twin.markdown(headers, body)


def main(argv):
  del argv
  worker_sides = [int(i) for i in FLAGS.worker_sides]
  if worker_sides:
    first_hf = first_hf_side(FLAGS.config, FLAGS.worker_size, FLAGS.compile)
    worker_hf = [i >= first_hf for i in worker_sides]
    if all(worker_hf):
      # radjax's state, built for the twin's weights and then dropped, goes back to the
      # GPU at once instead of staying in JAX's pool beside HF's step.
      os.environ['XLA_PYTHON_CLIENT_ALLOCATOR'] = 'platform'
  # As main.py does, before JAX starts its backend. One process: HF's side gets it too.
  host_memory.restart_with(FLAGS.config.runtime.host_allocator)
  device = hf_twin.start(FLAGS.torch_threads, f'; HF attention {FLAGS.hf_attn}; host memory: '
                         + f'{host_memory.in_effect()}, both sides')
  if worker_sides:
    isolated_sides.worker(
        lambda: worker_build(FLAGS.config, FLAGS.worker_size, FLAGS.compile, FLAGS.hf_attn,
                             FLAGS.hf_grad_ckpt, hf=any(worker_hf)),
        worker_sides, FLAGS.warmup,
        lambda run: hf_twin.timed(run, lambda: hf_twin.sync(device)), FLAGS.lead)
    return
  if FLAGS.dry:
    for size in FLAGS.sizes:
      r = dry(FLAGS.config, size)
      diff = r['radjax'] / r['hf'] - 1
      print(f"{size}: radjax {r['radjax']:,} params, HF {r['hf']:,} ({100 * diff:+.3f} %); "
            f"{r['image_tokens']} image tokens; {r['dtype']}; batch {r['shapes']}")
    return
  rows = []
  for size in FLAGS.sizes:
    if FLAGS.isolate or FLAGS.one_at_a_time:
      rows_size = with_ratios(isolated_sides.run(
          sys.argv, size, side_groups(FLAGS.config, size, FLAGS.compile, FLAGS.one_at_a_time),
          FLAGS.steps, FLAGS.one_at_a_time, report=print_times))
    else:
      rows_size = compare(FLAGS.config, size, FLAGS.steps, FLAGS.warmup, FLAGS.compile,
                          FLAGS.hf_attn, FLAGS.hf_grad_ckpt, FLAGS.lead)
      print_times(rows_size)
    rows += rows_size
  print(table(rows, FLAGS.peak_tflops))


def print_times(rows: list[dict]) -> None:
  """Each side's timed steps, as soon as they are known."""
  for r in rows:
    print(f"  {r['size']} {r['side']}: " + ' '.join(f'{t * 1e3:.0f}' for t in r['times'])
          + f" ms; step-0 loss {r['loss0']}", flush=True)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
