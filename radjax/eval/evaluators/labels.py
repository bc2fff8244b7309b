"""A finding classifier on held-out images: per-observation AUROC and P/R/F1 at p = 0.5,
micro F1 and macro AUROC (radjax/eval/metrics/classification.py); predictions.jsonl has
each record's probabilities and the labels it was scored against (null: none)."""
import json
import os

import jax
import numpy as np

from radjax.core import sharding
from radjax.data import pipeline, pixels, schema, source
from radjax.eval.evaluators import eval_sets
from radjax.eval.metrics import classification


class LabelEvaluator:

  def __init__(self, exp, split: str):
    self.exp, self.split = exp, split
    self.eval_set = eval_sets.resolve(exp.config, 'labels', split)
    self._rows = sharding.batch_sharding(exp.mesh, exp.rules, 1)
    with exp.context():
      self._predict = jax.jit(
          lambda params, batch, index: (
              exp.task.predict(exp.model, params, pixels.as_floats(batch)['images'])[0],
              batch['labels'], batch['label_mask'], index),
          in_shardings=(exp.state_shardings.params, exp.batch_shardings, self._rows))

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    del step, writer
    cfg, task = self.exp.config, self.exp.task
    s = self.eval_set
    records = s.records()
    ds = pipeline.eval_dataset(cfg, s.processor(task), s.split, cfg.eval.batch_size,
                               records=records)
    probs, truth, masks, rows = [], [], [], []
    for batch in pipeline.make_iterator(ds, cfg.data.worker_threads):
      # The record index of each row, -1 for padding rows (they are no record).
      index = np.where(batch[source.EVAL_MASK] > 0, batch[source.EVAL_INDEX], -1)
      index = jax.make_array_from_process_local_data(self._rows, index.astype(np.int32))
      with self.exp.context():
        out = self._predict(params, pipeline.to_global(batch, self.exp.batch_shardings), index)
      p, y, mask, i = (pipeline.to_host(x) for x in out)  # every process sees every row
      real = i >= 0
      probs.append(p[real])
      truth.append(y[real])
      masks.append(mask[real])
      rows.append(i[real])
    probs, truth, masks = (np.concatenate(x) for x in (probs, truth, masks))
    labelled = masks > 0  # records without labels are predicted, not scored
    scores = classification.probability_scores(probs[labelled], truth[labelled],
                                               task.targets.names)
    if out_dir is not None and jax.process_index() == 0:
      self._write(out_dir, records, np.concatenate(rows), probs, truth, masks)
    return {f'eval/labels_{k}': float(v) for k, v in scores.items()}

  def _write(self, out_dir, records, rows, probs, truth, masks) -> None:
    names = self.exp.task.targets.names
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'predictions.jsonl'), 'w') as f:
      for i, p, y, m in zip(rows, probs, truth, masks):
        f.write(json.dumps({
            'id': schema.decode(records[int(i)])['id'],
            'probabilities': {n: round(float(v), 6) for n, v in zip(names, p)},
            # as scored: uncertain mapped by uncertain_as, unlisted ones 0; null: no labels
            'labels': {n: int(v) for n, v in zip(names, y)} if m > 0 else None,
        }) + '\n')
