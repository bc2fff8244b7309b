r"""What an idle gap before a train step costs each side of bench/vs_hf_train.py, alone.

  python bench/idle_gap.py --config configs/demo.py --sizes 43m --steps 5 --gaps 0,3,0,3

Each side (radjax without the label head, HF eager) is built as vs_hf_train builds it and
stepped alone, `steps` times per entry of --gaps, sleeping that many seconds before each
timed step. Per step: wall time, kernel (sys) time and minor page faults of the process,
and the memory the guest kernel handed back to the host meanwhile (free page reporting,
/sys/module/page_reporting; '-' where the kernel has none). Stepped in turn, each side's
step is the other's idle gap.
"""
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import hf_twin, vs_hf_train  # noqa: E402
from radjax.core import host_memory  # noqa: E402

FLAGS = flags.FLAGS
REPORTED_KIB = '/sys/module/page_reporting/parameters/reported_kib'


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('sizes', ['demo'], 'Sizes, as in bench/vs_hf_train.py.')
  flags.DEFINE_integer('steps', 5, 'Timed steps per side and gap.')
  flags.DEFINE_list('gaps', ['0', '3', '0', '3'], 'Seconds idle before each timed step; '
                    'one block of steps per entry, in this order.')
  flags.DEFINE_integer('torch_threads', 0, 'torch intra-op threads (0: its default).')


def reported_mib(path: str = REPORTED_KIB) -> float | None:
  """MiB the kernel has reported free to the host so far; None without free page
  reporting."""
  try:
    with open(path) as f:
      return int(f.read()) / 1024
  except (OSError, ValueError):
    return None


def _delta(before, after):
  return None if before is None or after is None else after - before


def gap_step(run, gap: float, sync) -> dict:
  """Sleeps `gap` seconds, then times one step: wall and sys seconds, minor faults, and
  MiB reported to the host during the gap and during the step."""
  m0 = reported_mib()
  time.sleep(gap)
  m1 = reported_mib()
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  wall = hf_twin.timed(run, sync)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return dict(wall=wall, sys=r1.ru_stime - r0.ru_stime, faults=r1.ru_minflt - r0.ru_minflt,
              gap_mib=_delta(m0, m1), step_mib=_delta(m1, reported_mib()))


def summarise(side: str, gap: float, rows: list[dict]) -> list:
  """One table row: medians over the block's steps ('-' where reporting is absent)."""
  def med(key, fmt, scale=1.0):
    vals = [r[key] for r in rows]
    return '-' if None in vals else fmt.format(scale * float(np.median(vals)))
  return [side, f'{gap:g} s', med('wall', '{:,.1f} ms', 1e3), med('sys', '{:,.0f} ms', 1e3),
          med('faults', '{:,.0f}'), med('gap_mib', '{:,.0f}'), med('step_mib', '{:,.0f}')]


def main(argv):
  del argv
  host_memory.restart_with(FLAGS.config.runtime.host_allocator)  # as vs_hf_train
  device = hf_twin.start(FLAGS.torch_threads, f'; host allocator: {host_memory.in_effect()}')
  gaps = [float(g) for g in FLAGS.gaps]
  body = []
  for size in FLAGS.sizes:
    _, _, sides = vs_hf_train.build_sides(FLAGS.config, size, label_head=False)
    for s in sides:
      for _ in range(2):  # compiles
        s['run']()
      for gap in gaps:
        rows = [gap_step(s['run'], gap, lambda: hf_twin.sync(device))
                for _ in range(FLAGS.steps)]
        body.append([size] + summarise(s['name'], gap, rows))
        print(' | '.join(map(str, body[-1])), flush=True)
  print(hf_twin.markdown(['size', 'side', 'idle gap', 'step (median)', 'sys / step',
                          'minor faults / step', 'MiB to host in the gap',
                          'MiB to host in the step'], body))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
