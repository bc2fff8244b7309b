r"""What freezing towers saves: XrayGPT's freeze (vision, Q-Former and LLM frozen, only the
projector's output linear trained) against the same model fully trained.

  python bench/frozen.py --config configs/xraygpt.py:size=tiny [--steps 5]

Rows: the recipe's freeze (config.optim.param_groups as given), everything trained
(('.*', 1.0)), everything frozen (a lower bound: the loss forward alone) and the loss's
forward pass. Columns: XLA's FLOPs of the compiled step with layers unrolled
(scan_layers off, since a scanned body counts once), temp bytes and peak of the compiled
step (layers as configured), and the measured step time (--steps 0 skips it).

The check that a frozen part has no backward pass: with only the projector trained, the
step may add to the forward only the activation gradients through the LLM (about one
LLM forward: `llm activation backward` below, against the analytic 2 x params x tokens +
attention); a weight gradient of the LLM or any backward through the vision tower would
add as much again.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import compiled_step, memory  # noqa: E402

FLAGS = flags.FLAGS
FREEZES = {'recipe': None, 'all trained': (('.*', 1.0),), 'all frozen': (('.*', 'frozen'),)}


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_integer('steps', 5, 'Timed steps per row (0: compile only).')


def forward_flops(config) -> float:
  """XLA FLOPs of the training loss alone (no gradient), layers unrolled."""
  config = compiled_step.with_overrides(config, {'runtime.scan_layers': False})
  exp = memory.experiment(config, 1)
  loss = lambda params, batch: exp.task.train_loss(exp.model, params, batch, None)  # noqa: E731
  with exp.context():
    compiled = jax.jit(loss).lower(exp.state.params, compiled_step.abstract_batch(exp)).compile()
  return compiled_step.flops(compiled)


def llm_forward_flops(config) -> float:
  """Analytic forward FLOPs of the decoder (2 x matmul params x tokens + attention scores
  and values), the size of its activation backward."""
  lm, b, t = config.model.llm, config.train.batch_size, config.data.max_len
  hd = lm.head_dim or lm.embed_dim // lm.num_heads
  kv = lm.num_kv_heads or lm.num_heads
  per_layer = (lm.embed_dim * hd * (lm.num_heads * 2 + kv * 2)  # q, o; k, v
               + 3 * lm.embed_dim * lm.mlp_dim)
  matmul = lm.num_layers * per_layer + lm.embed_dim * lm.vocab_size  # + the LM head
  return 2 * matmul * b * t + 4 * lm.num_layers * lm.num_heads * hd * t * t * b


def freeze_row(config, name: str, steps: int = 0, scanned_memory: bool = True) -> dict:
  """FLOPs (unrolled), memory (as configured; `scanned_memory=False`: of the unrolled
  step, one compile less) and step seconds of one freeze."""
  groups = FREEZES[name]
  if groups is not None:
    config = compiled_step.with_overrides(config, {'optim.param_groups': groups})
  unrolled = compiled_step.lower_and_compile(
      compiled_step.with_overrides(config, {'runtime.scan_layers': False}))
  row = dict(name=name, flops=compiled_step.flops(unrolled['compiled']))
  if config.runtime.scan_layers and scanned_memory:
    row.update(compiled_step.memory_bytes(compiled_step.lower_and_compile(config)['compiled']))
  else:
    row.update(compiled_step.memory_bytes(unrolled['compiled']))
  row['step_s'] = compiled_step.measured_step_s(config, steps) if steps else None
  return row


def table(rows, fwd: float) -> str:
  out = ['| parameters trained | XLA FLOPs per step | vs forward | step temp | step peak | '
         'step time |', '|---|---|---|---|---|---|']
  for r in rows:
    step = f'{r["step_s"] * 1e3:.0f} ms' if r['step_s'] is not None else '-'
    out.append(f'| {r["name"]} | {r["flops"] / 1e9:.2f} G | {r["flops"] / fwd:.2f}x | '
               f'{compiled_step.size(r["temp"])} | {compiled_step.size(r["peak"])} | {step} |')
  out.append(f'| (loss forward only) | {fwd / 1e9:.2f} G | 1.00x | - | - | - |')
  return '\n'.join(out)


def main(argv):
  del argv
  config = c = compiled_step.prepare(FLAGS.config)
  print(f'recipe freeze: param_groups {tuple(c.optim.param_groups)}; batch '
        f'{c.train.batch_size} x {c.data.max_len} tokens, dtype {c.runtime.dtype}')
  rows = []
  for name in FREEZES:
    rows.append(freeze_row(config, name, FLAGS.steps))
    print(f'  {name}: {rows[-1]["flops"] / 1e9:.2f} GFLOPs', flush=True)
  fwd = forward_flops(config)
  print()
  print(table(rows, fwd))
  by = {r['name']: r for r in rows}
  llm = llm_forward_flops(config)
  extra = by['recipe']['flops'] - by['all frozen']['flops']
  print(f'\nllm activation backward (recipe - all frozen): {extra / 1e9:.2f} GFLOPs = '
        f'{extra / llm:.2f}x the analytic LLM forward ({llm / 1e9:.2f} GFLOPs); '
        f'all trained - recipe: {(by["all trained"]["flops"] - by["recipe"]["flops"]) / 1e9:.2f}'
        ' GFLOPs')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
