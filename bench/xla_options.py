r"""radjax's train step compiled under XLA options, the variants stepped in turn in one
process: whether a flag (or a new jaxlib's) speeds the step up, HF left out.

  python bench/xla_options.py --config configs/demo.py [--size 43m] --steps 20 \
      --variant 'xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED' \
      --variant 'xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_ELTWISE'

The first row is the step as compiled by default. A variant is `name=value[;name=value]`
(compile options of `jax.stages.Lowered.compile`: XLA's debug options without the `--`;
`true`/`false` and integers are converted). Every variant builds the same initial state,
so a variant whose first loss differs from the default's changed the numbers, not only the
speed. Sizes as in bench/vs_hf_train.py (`demo`, `43m`, `100m`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import hf_twin, vs_hf_train  # noqa: E402
from radjax import tasks  # noqa: E402
from radjax.core import host_memory  # noqa: E402

FLAGS = flags.FLAGS


def parse_variant(text: str) -> dict:
  """'a=true;b=3;c=X,Y' -> {'a': True, 'b': 3, 'c': 'X,Y'} (values may hold commas)."""
  out = {}
  for item in filter(None, text.split(';')):
    name, sep, value = item.partition('=')
    if not sep or not name:
      raise ValueError(f'--variant {text!r}: {item!r} is not name=value')
    lowered = value.lower()
    out[name.strip()] = (lowered == 'true' if lowered in ('true', 'false') else
                         int(value) if value.lstrip('-').isdigit() else value)
  return out


def compare(config, size: str, variants: list[str], steps: int, lead: int = 1) -> list[dict]:
  """One row per variant ('' first: the default compile): median and min step seconds,
  first loss, median against the default's."""
  cfg = vs_hf_train.without_label_head(vs_hf_train.sized(config, size))
  task = tasks.TASKS['vlm'](cfg, None)
  batch = vs_hf_train.synthetic_batch(cfg, task.model_cfg.tokens_per_image,
                                      task.model_cfg.num_labels)
  sides = [vs_hf_train.radjax_side(cfg, batch, v or 'default', parse_variant(v))
           for v in [''] + list(variants)]
  for s in sides:
    s['loss0'] = s['first_loss']()
  times = vs_hf_train.step_in_turn([s['run'] for s in sides], steps, lead,
                                   lambda run: hf_twin.timed(run, lambda: None))
  base = float(np.median(times[0]))
  return [dict(variant=s['name'], median_s=float(np.median(t)), min_s=float(np.min(t)),
               loss0=s['loss0'], vs_default=base / float(np.median(t)))
          for s, t in zip(sides, times)]


def table(rows: list[dict]) -> str:
  return hf_twin.markdown(
      ['variant', 'step (median)', 'step (min)', 'speed vs default', 'loss at step 0'],
      [[f"`{r['variant']}`", f"{r['median_s'] * 1e3:,.1f} ms", f"{r['min_s'] * 1e3:,.1f} ms",
        f"{r['vs_default']:.3f}x", f"{r['loss0']:.6f}"] for r in rows])


def main(argv):
  del argv
  host_memory.restart_with(FLAGS.config.runtime.host_allocator)
  print(table(compare(FLAGS.config, FLAGS.size, FLAGS.variant, FLAGS.steps, FLAGS.lead)))


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_string('size', 'demo', "'demo' (the config as given), '43m' or '100m'.")
  flags.DEFINE_multi_string('variant', [], 'XLA compile options of one variant: '
                            'name=value[;name=value].')
  flags.DEFINE_integer('steps', 20, 'Timed rounds (one timed step per variant each).')
  flags.DEFINE_integer('lead', 1, 'Untimed steps of a variant before each of its timed ones.')
  flags.mark_flags_as_required(['config'])
  app.run(main)
