"""Metric writers: clu's TensorBoard + console writers plus WORKDIR/metrics.jsonl."""
import json
import math
import os

import jax
import numpy as np
from absl import logging
from clu import metric_writers

from radjax.core import files


def read_rows(path: str) -> list[dict]:
  """metrics.jsonl's rows. A half-written last line (a kill mid-write) is left out with a
  warning; a damaged line before it is an error naming the file and line."""
  if not os.path.exists(path):
    return []
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  rows = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line.decode('utf-8'))
      if not isinstance(row, dict) or not isinstance(row.get('step'), int):
        raise ValueError('a metrics row is a JSON object with an integer "step"')
      rows.append(row)
    except ValueError as e:
      if any(rest.strip() for rest in lines[n:]):
        raise ValueError(f'{path}:{n}: not a JSON metrics row ({e})') from None
      logging.warning('%s:%d: dropping a half-written last line', path, n)
  return rows


def _of_split(key: str, split: str) -> bool:
  """A key of `split`'s evaluation: 'eval/<split>_*', or for 'val' any eval key that no
  other split names (evaluators/__init__.py split_key)."""
  name = key.removeprefix('eval/')
  if name == key:
    return False
  if split != 'val':
    return name.startswith(f'{split}_')
  return not name.startswith(('train_', 'test_'))


def eval_logged(path: str, step: int, split: str = 'val') -> bool:
  """Whether metrics.jsonl has the `split` evaluation of `step` (a kill during it leaves
  none; a `--mode=eval` of another split does not count). Process 0's answer, for every
  process (only process 0 writes the file)."""
  found = jax.process_index() != 0 or any(
      r.get('step') == step and any(_of_split(k, split) for k in r) for r in read_rows(path))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    found = bool(multihost_utils.broadcast_one_to_all(np.asarray(found)))
  return found


def _ends_mid_line(path: str) -> bool:
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return False
  with open(path, 'rb') as f:
    f.seek(-1, os.SEEK_END)
    return f.read(1) != b'\n'


def _rewrite(path: str, rows: list[dict]) -> None:
  files.write_text_atomic(path, ''.join(json.dumps(r) + '\n' for r in rows))


class JsonlWriter(metric_writers.MetricWriter):
  """One JSON object per `write_scalars` call: {"step": s, name: value, ...}.

  On resume, lines past the restored step (and a half-written last line) are dropped so
  the file tells one uninterrupted story. A checkpointed step's train row is written
  before its checkpoint, so an evaluation at that step is a second row for the step.
  """

  def __init__(self, path: str, resume_step: int | None):
    self.path = path
    if resume_step is None:  # append only (evaluation runs), after any half-written line
      if _ends_mid_line(path):
        _rewrite(path, read_rows(path))
      self._file = open(path, 'a')
      return
    rows = [r for r in read_rows(path) if r['step'] <= resume_step] if resume_step > 0 else []
    _rewrite(path, rows)
    self._file = open(path, 'a')

  def write_scalars(self, step, scalars):
    row = {'step': int(step)}
    for k, v in scalars.items():  # NaN / inf as null: bare NaN is no JSON (TensorBoard keeps it)
      v = float(np.asarray(v))
      row[k] = v if math.isfinite(v) else None
    try:
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()
    except OSError as e:  # a full disk: named, the rows before it kept
      raise files.named(e, self.path) from e

  # Only scalars belong in the JSON lines file; TensorBoard takes the rest.
  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_pointcloud(self, step, point_clouds, *, point_colors=None, configs=None):
    del step, point_clouds, point_colors, configs

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


def make_writers(workdir: str, resume_step: int | None):
  """(all writers, TensorBoard + console only). The loop writes each step's scalars
  in one call to the first; progress reports (steps/s, ETA) go to the second so
  metrics.jsonl keeps one row per logged step. metrics.jsonl is process 0's."""
  lead = jax.process_index() == 0
  tb = metric_writers.create_default_writer(workdir, just_logging=not lead, asynchronous=True)
  if not lead:
    return tb, tb
  jsonl = JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step)
  return metric_writers.MultiWriter([tb, jsonl]), tb
