r"""What a volume example costs between the reader and the device: its batch bytes as
config.data.pixels sends volume slots (radjax/data/pixels.py volume_fields: float16 voxels
and 8-bit 2D images, which the device repeats and normalises), against the float32 volumes
[M, H, W, D, C] the host built before (pixels='float32', still a knob).

  python bench/volume_bytes.py --config configs/radfm.py            # the full recipe's sizes
  python bench/volume_bytes.py --config configs/radfm.py:size=tiny --read 48

Bytes per example: from the task's volume batch spec (radjax/tasks/vlm.py batch_spec
('volume'): every field, tokens and masks too) at its deepest (config.data.max_slices,
else the tower's max_depth); nothing is read or allocated. --read N: also the reader's
examples/s for each transport (pipeline.train_dataset + make_iterator, config.data's
worker threads, the config's volume components alone, N examples after one warm-up
batch; the median of --repeats runs, interleaved), and the bytes of the batches it made
(trimmed to their depth buckets).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TensorFlow (tfds) announces it on stderr

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax import run, tasks  # noqa: E402
from radjax.data import pipeline  # noqa: E402

FLAGS = flags.FLAGS
TRANSPORTS = ('float32', 'compact')


def define_flags():
  config_flags.DEFINE_config_file('config', None, "Recipe config (a 'vit3d' tower).",
                                  lock_config=True)
  flags.DEFINE_integer('read', 0, 'Examples to read per transport (0: the spec only).')
  flags.DEFINE_integer('repeats', 3, '--read: runs per transport, interleaved; the median.')


def with_pixels(config, transport: str):
  c = config.copy_and_resolve_references()
  if transport == 'float32':
    c.data.pixels = 'float32'
  elif c.data.get('pixels', 'uint8') == 'float32':
    c.data.pixels = 'uint8'
  return c


def spec_bytes(config) -> dict[str, int]:
  """{field: bytes per example} of the volume batch (no tokenizer: shapes only)."""
  c = config.copy_and_resolve_references()
  if c.model.image_token_id < 0:
    c.model.image_token_id = 4
  spec = tasks.make(c, None).batch_spec('volume')
  return {k: int(np.prod(f.shape)) * np.dtype(f.dtype).itemsize for k, f in spec.items()}


def volume_only(config):
  """The config's mixture with its volume components alone (the reader's volume batches)."""
  c = config.copy_and_resolve_references()
  kept = {k: v for k, v in c.data.mixture.items() if v.get('kind', 'image') == 'volume'}
  if not kept:
    raise ValueError('--read: config.data.mixture has no volume component')
  c.data.mixture = ml_collections.ConfigDict(kept)
  return c


def read_rate(config, n: int) -> tuple[float, float]:
  """(examples/s, batch bytes per example) of the reader over n examples."""
  task = run.make_task(config)
  ds = pipeline.train_dataset(config, task.processor, config.data.train_split, 0, 1)
  it = pipeline.make_iterator(ds, config.data.get('worker_threads', 0))
  size = len(next(it)['tokens'])  # warm-up: the first batch's decode and file opens
  done = nbytes = 0
  start = time.perf_counter()
  while done < n:
    batch = next(it)
    done += size
    nbytes += sum(v.nbytes for v in batch.values() if isinstance(v, np.ndarray))
  return done / (time.perf_counter() - start), nbytes / done


def main(argv):
  del argv
  config = FLAGS.config
  rows = {t: spec_bytes(with_pixels(config, t)) for t in TRANSPORTS}
  v, c = config.model.vision, config.data
  size = pipeline.volume_image_size(config)  # the deepest batch's in-plane size
  print(f'volume batch of {c.max_images} slots of {size} x {size} x '
        f'{pipeline.max_slices(config)}, C = {v.num_channels}; bytes per example:')
  for t, fields in rows.items():
    parts = ', '.join(f'{k} {b / 1e6:.2f}' for k, b in fields.items() if b >= 1e5)
    print(f'  {t:8s} {sum(fields.values()) / 1e6:9.2f} MB  ({parts} MB)')
  before, after = (sum(rows[t].values()) for t in TRANSPORTS)
  print(f'  factor {before / after:.2f}')
  if FLAGS.read:
    cfg = volume_only(config)
    runs = {t: [] for t in TRANSPORTS}
    for _ in range(FLAGS.repeats):  # interleaved: a shared host's load falls on both
      for t in TRANSPORTS:
        runs[t].append(read_rate(with_pixels(cfg, t), FLAGS.read))
    for t, got in runs.items():
      rates = sorted(r for r, _ in got)
      print(f'  read {t:8s} {np.median(rates):.1f} examples/s (runs {rates[0]:.0f}-'
            f'{rates[-1]:.0f}), {got[0][1] / 1e6:.2f} MB/ex as batched')


if __name__ == '__main__':
  define_flags()
  app.run(main)
