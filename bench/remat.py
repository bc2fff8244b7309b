r"""Rematerialisation policies compared at a fixed batch: peak memory of the compiled train
step (XLA memory_analysis) and, with --steps, the measured step time.

  python bench/remat.py --config configs/llava_tinyllama.py --steps 5 --hbm_gib 80
      [--policies none,dots,qkv_and_attention_out,full] [--parts llm,vision]
      [--config.train.batch_size=8 ...]

Each policy of radjax/models/layers.py REMAT_POLICIES is set on the parts named by
--parts (config.runtime.remat.<part>). The memory columns come from abstract shapes (no
allocation); step time needs the model in memory (--steps 0 skips it). The recommended
policy is the fastest whose peak fits --hbm_gib (without times: the one that recomputes
least, in the order of --policies). On a CPU, cuDNN attention becomes xla (printed).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import compiled_step  # noqa: E402
from radjax.models import layers as layers_lib  # noqa: E402

FLAGS = flags.FLAGS
# Least to most recomputation (the fallback order when no step is timed).
DEFAULT_POLICIES = 'none,dots,qkv_and_attention_out,attention_out,full'


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_string('policies', DEFAULT_POLICIES, 'REMAT_POLICIES names, least recompute '
                      'first.')
  flags.DEFINE_string('parts', 'llm,vision', 'Parts whose config.runtime.remat is set.')
  flags.DEFINE_integer('steps', 0, 'Timed steps per policy (0: memory only).')
  flags.DEFINE_float('hbm_gib', 0.0, 'Memory budget per device for the recommendation '
                     '(0: no budget).')


def remat_row(config, policy: str, parts=('llm', 'vision'), steps: int = 0,
              hbm_bytes: float = 0.0) -> dict:
  """Memory (and with steps > 0 the measured step seconds) of the train step with remat
  `policy` on `parts`. A policy whose peak exceeds `hbm_bytes` (when given) is not timed:
  it would not fit the device."""
  if policy not in layers_lib.REMAT_POLICIES:
    raise ValueError(f'--policies: unknown {policy!r}; choose from '
                     f'{sorted(layers_lib.REMAT_POLICIES)}')
  # Every row scanned, as a remat'd stack always is (layers.scanned_stack), so that the
  # rows' FLOPs (a scanned body counted once) and times compare.
  config = compiled_step.with_overrides(
      config, {'runtime.unroll_scan': False, **{f'runtime.remat.{p}': policy for p in parts}})
  r = compiled_step.lower_and_compile(config)
  row = dict(policy=policy, params=r['params'], compile_s=r['lower_s'] + r['compile_s'],
             flops=compiled_step.flops(r['compiled']), **compiled_step.memory_bytes(r['compiled']))
  fits = not hbm_bytes or row['peak'] <= hbm_bytes
  row['step_s'] = compiled_step.measured_step_s(config, steps) if steps and fits else None
  return row


def recommend(rows, hbm_bytes: float = 0.0) -> tuple[str, str]:
  """(policy, why): the fastest within the budget; without times, the first that fits."""
  fits = [r for r in rows if not hbm_bytes or r['peak'] <= hbm_bytes]
  if not fits:
    return '', 'no policy fits the budget: lower the batch or shard more'
  timed = [r for r in fits if r['step_s'] is not None]
  if timed:
    return min(timed, key=lambda r: r['step_s'])['policy'], 'fastest that fits'
  return fits[0]['policy'], 'least recompute that fits (no step timed)'


def table(rows) -> str:
  none = next((r for r in rows if r['policy'] == 'none'), rows[0])
  out = ['| remat policy | step temp | step peak | peak vs none | XLA FLOPs (scan body once) '
         '| step time | compile |', '|---|---|---|---|---|---|---|']
  for r in rows:
    step = f'{r["step_s"] * 1e3:.0f} ms' if r['step_s'] is not None else '-'
    out.append(f'| `{r["policy"]}` | {compiled_step.size(r["temp"])} | '
               f'{compiled_step.size(r["peak"])} | {r["peak"] / none["peak"]:.2f}x | '
               f'{r["flops"] / 1e12:.3f} T | {step} | {r["compile_s"]:.0f} s |')
  return '\n'.join(out)


def main(argv):
  del argv
  config = c = compiled_step.prepare(FLAGS.config)
  parts = tuple(FLAGS.parts.split(','))
  rows, budget = [], FLAGS.hbm_gib * compiled_step.GIB
  for policy in FLAGS.policies.split(','):
    rows.append(remat_row(config, policy, parts, FLAGS.steps, budget))
    print(f'  {policy}: peak {compiled_step.size(rows[-1]["peak"])}', flush=True)
  print(f'\nmodel: {rows[0]["params"] / 1e6:.1f}M params, llm '
        f'{c.model.llm.embed_dim}x{c.model.llm.num_layers}L, vision '
        f'{c.model.vision.embed_dim}x{c.model.vision.num_layers}L; batch {c.train.batch_size} '
        f'x {c.data.max_len} tokens; dtype {c.runtime.dtype}; remat on {", ".join(parts)}')
  print(table(rows))
  policy, why = recommend(rows, budget)
  budget_text = f'{FLAGS.hbm_gib:g} GiB' if FLAGS.hbm_gib else 'no budget'
  print(f'\nrecommended remat ({budget_text}): {policy or "none fits"} ({why})')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
