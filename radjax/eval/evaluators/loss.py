"""Held-out loss of the task's own objective: val_loss, val_accuracy (where the task has
one) and, for a loss per text token, val_perplexity (a classifier's is no perplexity); on
the default eval dataset unless config.eval.datasets.loss gives one (eval_sets.py)."""
import functools

import jax
import numpy as np

from radjax.core import sharding
from radjax.data import pipeline
from radjax.eval.evaluators import eval_sets


class LossEvaluator:

  def __init__(self, exp, split: str, name: str = 'loss'):
    self.exp = exp
    self.split = split
    self.eval_set = eval_sets.resolve(exp.config, name, split)
    with exp.context():
      self._loss = jax.jit(functools.partial(exp.task.loss, exp.model, rng=None),
                           in_shardings=(exp.state_shardings.params,
                                         sharding.batch_sharding(exp.mesh, exp.rules, 1)))

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    del step, writer, out_dir
    cfg = self.exp.config
    s = self.eval_set
    ds = pipeline.eval_dataset(cfg, s.processor(self.exp.task), s.split, cfg.eval.batch_size,
                               records=s.records())
    totals = None
    for i, batch in enumerate(pipeline.make_iterator(ds, cfg.data.worker_threads)):
      if cfg.eval.num_loss_batches and i >= cfg.eval.num_loss_batches:
        break
      with self.exp.context():
        sums = self._loss(params, pipeline.to_global(batch, self.exp.batch_shardings))
      totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    w = max(float(totals['weight_sum']), 1.0)
    loss = float(totals['loss_sum']) / w
    out = {'eval/val_loss': loss}
    if 'accuracy_sum' in totals:
      out['eval/val_accuracy'] = float(totals['accuracy_sum']) / w
    if self.exp.task.token_loss:
      out['eval/val_perplexity'] = float(np.exp(min(loss, 50.0)))
    return out
