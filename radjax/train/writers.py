"""Metric writers: clu's TensorBoard + console writers plus WORKDIR/metrics.jsonl."""
import json
import os

import jax
import numpy as np
from clu import metric_writers


class JsonlWriter(metric_writers.MetricWriter):
  """One JSON object per `write_scalars` call: {"step": s, name: value, ...}.

  On resume, lines past the restored step are dropped so the file tells one
  uninterrupted story.
  """

  def __init__(self, path: str, resume_step: int | None):
    self.path = path
    if resume_step is None:  # append only (evaluation runs)
      self._file = open(path, 'a')
      return
    lines = []
    if resume_step > 0 and os.path.exists(path):
      with open(path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)['step'] <= resume_step]
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(lines)
    os.replace(tmp, path)
    self._file = open(path, 'a')

  def write_scalars(self, step, scalars):
    row = {'step': int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()

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
