r"""The train pipeline beside a Python-busy thread in the trainer process: the GIL's
convoy effect on read threads, against worker processes.

  python bench/gil_contention.py --config configs/llava_tinyllama.py \
      --config.data.dir=$HOME/.cache/radjax/demo_v6 [--rows inproc:0,threads:2,processes:2]

A trainer's own Python (dispatching the step, writing metrics, saving a checkpoint,
evaluating) holds the GIL while the readers work. A reader that releases the GIL for each
PIL or tokenizer call must win it back each time, and beside a busy thread that can take
up to the switch interval (5 ms). Per row: ms per example read alone, then beside a
thread that runs Python without pause (the worst case; a real trainer is busy part of the
time), and the ratio.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import data_pipeline  # noqa: E402

FLAGS = flags.FLAGS
KINDS = ('inproc', 'threads', 'processes')


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('rows', ['inproc:0', 'threads:2', 'processes:2'],
                    f'kind:workers, kind one of {KINDS} (inproc: read in the calling thread).')
  flags.DEFINE_integer('batches', 30, 'Timed batches per measurement.')
  flags.DEFINE_integer('repeats', 2, 'Alone / beside pairs per row.')
  flags.DEFINE_bool('augment', False, 'config.data.augment.')


def ms_per_example(it, batches: int, batch_size: int) -> float:
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return 1e3 * (time.perf_counter() - t0) / (batches * batch_size)


class BusyPython:
  """A thread of this process that runs Python without pause while the block runs;
  `iterations` counts its loops (the proof that it ran beside the reader)."""

  def __init__(self):
    self.iterations = 0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._spin, daemon=True)

  def _spin(self):
    while not self._stop.is_set():
      self.iterations += 1

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  @property
  def running(self) -> bool:
    return self._thread.is_alive()


def beside_busy_python(fn):
  """fn() while another thread of this process runs Python without pause; returns fn()'s
  result and the busy thread's loop count."""
  with BusyPython() as busy:
    out = fn()
    assert busy.running, 'the busy thread stopped before the reader finished'
  return out, busy.iterations


def measure(config, kind: str, workers: int, batches: int, repeats: int) -> dict:
  if kind not in KINDS:
    raise ValueError(f'--rows: {kind!r} is not one of {KINDS}')
  it = data_pipeline.radjax_iterator(config, 0 if kind == 'inproc' else workers,
                                     kind == 'processes')
  b = config.train.batch_size
  try:
    for _ in range(data_pipeline.warmup_batches(workers)):
      next(it)
    alone, beside, busy_loops = [], [], 0
    for _ in range(repeats):
      alone.append(ms_per_example(it, batches, b))
      ms, loops = beside_busy_python(lambda: ms_per_example(it, batches, b))
      beside.append(ms)
      busy_loops += loops
  finally:
    if hasattr(it, 'close'):
      it.close()
  return {'kind': kind, 'workers': workers, 'alone': min(alone), 'beside': min(beside),
          'busy_loops': busy_loops}


def table(rows: list[dict]) -> str:
  lines = ['| readers | workers | ms/example alone | beside busy Python | slowdown |',
           '|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['kind']} | {r['workers']} | {r['alone']:.2f} | {r['beside']:.2f} | "
                 f"{r['beside'] / r['alone']:.1f}x |")
  return '\n'.join(lines)


def main(argv):
  del argv
  config = data_pipeline.variant(FLAGS.config, augment=FLAGS.augment)
  data_pipeline.ensure_built(config)
  rows = []
  for spec in FLAGS.rows:
    kind, workers = spec.split(':')
    rows.append(measure(config, kind, int(workers), FLAGS.batches, FLAGS.repeats))
    print(rows[-1], file=sys.stderr, flush=True)
  c = config
  print(f'config: batch {c.train.batch_size} x {c.data.max_len} tokens, '
        f'{c.model.vision.image_size} px, augment={c.data.augment}; host: {os.cpu_count()} '
        f'CPUs; switch interval {1e3 * sys.getswitchinterval():.0f} ms')
  print(table(rows))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
