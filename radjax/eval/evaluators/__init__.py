"""Evaluators by name (`config.eval.evaluators`, default: the task's list). Each is
built from the experiment and split, and `run(params, step, writer, out_dir)` returns
`eval/*` scalars; `run_all` writes them to `out_dir/metrics.json` too."""
import json
import os

import jax

from radjax.eval.evaluators import codec, codes, instruction, labels, loss, reports

EVALUATORS = {'loss': loss.LossEvaluator, 'reports': reports.ReportEvaluator,
              'codec': codec.CodecEvaluator, 'labels': labels.LabelEvaluator,
              'codes_loss': codes.CodesLossEvaluator, 'codes_reports': codes.CodesReportEvaluator,
              **{name: instruction.make(name) for name in instruction.SCORERS}}


def make(exp, split: str) -> list:
  names = tuple(exp.config.eval.evaluators) or exp.task.evaluators
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f'config.eval.evaluators: {unknown} not in {sorted(EVALUATORS)}')
  return [EVALUATORS[n](exp, split) for n in names]


def run_all(evaluators, params, step: int, writer=None, out_dir: str | None = None) -> dict:
  metrics = {}
  for ev in evaluators:
    metrics.update(ev.run(params, step, writer, out_dir))
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump({'step': step, **metrics}, f, indent=1)
  return metrics
