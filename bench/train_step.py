r"""Train-step benchmark for any recipe: step time, tokens/s, analytic TFLOPs, MFU.

  python bench/train_step.py --config configs/demo.py --peak_tflops 1.0 \
      [--steps 20] [--config.train.batch_size=8 --config.data.max_len=2048 ...]

Synthetic batches of the config's static shapes (no dataset needed). FLOPs are
analytic (PaLM-style, 6N per token plus attention), per tower; a frozen tower
counts its forward pass only.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax import tasks  # noqa: E402
from radjax.core import host_memory, sharding  # noqa: E402
from radjax.train import optimizer as optimizer_lib  # noqa: E402
from radjax.train import setup  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (not at import: bench/data_pipeline.py imports the module)."""
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_integer('steps', 10, 'Timed steps (after 2 warm-up steps).')
  flags.DEFINE_float('peak_tflops', 0.0, 'Peak dense TFLOP/s of ONE device (e.g. 989 for '
                     'H100 SXM bf16); 0 skips MFU.')


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def analytic_flops(config, params, labels) -> dict:
  """Training FLOPs per step by tower (forward x3 when trained, x1 when frozen)."""
  if config.model.kind == 'llm':  # a bare decoder (task 'lm')
    params, labels = {'llm': params, 'vision': {}, 'projector': {}}, {'llm': labels}
  b, t = config.train.batch_size, config.data.max_len
  v, lm = config.model.vision, config.model.llm
  # Image slots per row; packed rows (config.data.pack) have pack_max_examples times more.
  n_img = b * config.data.max_images * (config.data.pack_max_examples
                                        if config.data.get('pack', False) else 1)
  grids = config.model.get('anyres_grids', ())
  if grids:  # AnyRes: every image slot's tile slots go through the tower
    n_img *= 1 + max(r * c for r, c in grids)
  patches = (v.image_size // v.patch_size) ** 2 + int(v.variant == 'clip')

  def trained(tower):
    return any(lab != optimizer_lib.FROZEN for lab in jax.tree.leaves(labels.get(tower, {})))

  n_llm = _count(params['llm']) - (0 if lm.tie_embeddings else lm.vocab_size * lm.embed_dim)
  hd = lm.head_dim or lm.embed_dim // lm.num_heads
  # The LM head runs where the loss is: the last max_target_tokens positions when set.
  head, t_head = lm.vocab_size * lm.embed_dim, min(t, config.data.get('max_target_tokens', 0) or t)
  llm_fwd = (2 * (n_llm - head) * b * t + 2 * head * b * t_head
             + 4 * lm.num_layers * lm.num_heads * hd * t * t * b)
  n_vit = _count(params['vision'])
  vit_fwd = 2 * n_vit * patches * n_img + 4 * v.num_layers * v.embed_dim * patches ** 2 * n_img
  proj_fwd = 2 * _count(params['projector']) * patches * n_img
  # Backward = activation grads (needed if anything upstream trains) + weight grads.
  upstream = {'vision': False, 'projector': trained('vision'),
              'llm': trained('vision') or trained('projector')}
  mult = {k: 1 + int(upstream[k] or trained(k)) + int(trained(k)) for k in upstream}
  out = {'llm': llm_fwd * mult['llm'], 'vision': vit_fwd * mult['vision'],
         'projector': proj_fwd * mult['projector']}
  out['total'] = sum(out.values())
  return out


def synthetic_batch(exp, rng):
  """Random arrays of the task's batch spec (token ids below 1000)."""
  b = exp.config.train.batch_size
  out = {}
  for k, f in exp.task.batch_spec().items():
    shape = (b, *f.shape)
    if k == 'segment_ids':  # packed rows (config.data.pack): one example filling each row
      out[k] = np.ones(shape, f.dtype)
    elif k == 'positions':
      out[k] = np.broadcast_to(np.arange(shape[-1], dtype=f.dtype), shape).copy()
    elif k in ('tile_index', 'tile_weight'):  # AnyRes plans: every token the base's first
      out[k] = np.zeros(shape, f.dtype)
      out[k][..., 0] = 0 if k == 'tile_index' else 1
    elif np.issubdtype(f.dtype, np.integer):
      out[k] = rng.integers(10, 1000, shape).astype(f.dtype)
    elif f.dtype == np.bool_ or k == 'loss_mask':
      out[k] = np.ones(shape, f.dtype)
    else:
      out[k] = rng.normal(size=shape).astype(f.dtype)
  return out


def time_step(config, steps: int, devices=None) -> tuple:
  """(seconds per jitted train step on one synthetic batch, after 2 warm-up steps; the
  experiment; its state after the timed steps). `devices`: default all."""
  if config.model.image_token_id < 0:  # no tokenizer here: synthetic batches
    config.model.image_token_id = 4
  exp = setup.build(config, tasks.TASKS[config.task](config, None), devices)
  with sharding.activation_rules(exp.mesh, exp.rules):
    step = setup.jit_train_step(exp)
    batch = {k: jax.device_put(v, exp.batch_shardings[k])
             for k, v in synthetic_batch(exp, np.random.default_rng(0)).items()}
    state = exp.state
    for _ in range(2):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
  return (time.perf_counter() - t0) / steps, exp, state


def main(argv):
  del argv
  config = FLAGS.config
  host_memory.restart_with(config.runtime.host_allocator)  # as main.py, before JAX starts
  dt, exp, state = time_step(config, FLAGS.steps)
  flops = analytic_flops(config, jax.device_get(state.params), exp.labels)
  n_dev = jax.device_count()
  tokens = config.train.batch_size * config.data.max_len
  params = _count(state.params)
  print(f'devices: {n_dev} x {jax.devices()[0].device_kind}  mesh: {dict(exp.mesh.shape)}')
  print(f'params: {params / 1e6:.2f}M  batch: {config.train.batch_size} x '
        f'{config.data.max_len} tokens  dtype: {config.runtime.dtype}  '
        f'attention: {config.runtime.attention_impl}  remat: {config.runtime.remat.to_dict()}')
  print(f'step time: {dt * 1e3:.1f} ms')
  print(f'tokens/s: {tokens / dt:,.0f}  ({tokens / dt / n_dev:,.0f} per device)')
  print('TFLOPs per step: ' + ', '.join(f'{k} {v / 1e12:.4f}' for k, v in flops.items()))
  achieved = flops['total'] / dt / 1e12 / n_dev
  print(f'TFLOP/s per device: {achieved:.3f}')
  if FLAGS.peak_tflops:
    print(f'MFU: {100 * achieved / FLAGS.peak_tflops:.1f}% of {FLAGS.peak_tflops} TFLOP/s')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
