"""A finding classifier on held-out images: per-observation AUROC and P/R/F1 at p = 0.5,
micro F1 and macro AUROC (radjax/eval/metrics/classification.py)."""
import jax
import numpy as np

from radjax.data import pipeline, pixels
from radjax.eval.evaluators import eval_sets
from radjax.eval.metrics import classification


class LabelEvaluator:

  def __init__(self, exp, split: str):
    self.exp, self.split = exp, split
    self.eval_set = eval_sets.resolve(exp.config, 'labels', split)
    with exp.context():
      self._predict = jax.jit(
          lambda params, batch: (exp.task.predict(exp.model, params,
                                                  pixels.as_floats(batch)['images'])[0],
                                 batch['labels'], batch['label_mask']),
          in_shardings=(exp.state_shardings.params, exp.batch_shardings))

  def run(self, params, step: int, writer=None, out_dir=None) -> dict:
    del step, writer, out_dir
    cfg, task = self.exp.config, self.exp.task
    s = self.eval_set
    ds = pipeline.eval_dataset(cfg, s.processor(task), s.split, cfg.eval.batch_size,
                               records=s.records())
    probs, truth = [], []
    for batch in pipeline.make_iterator(ds, cfg.data.worker_threads):
      with self.exp.context():
        out = self._predict(params, pipeline.to_global(batch, self.exp.batch_shardings))
      p, y, mask = (pipeline.to_host(x) for x in out)  # every process sees every row
      probs.append(p[mask > 0])
      truth.append(y[mask > 0])
    scores = classification.probability_scores(np.concatenate(probs), np.concatenate(truth),
                                               task.targets.names)
    return {f'eval/labels_{k}': float(v) for k, v in scores.items()}
