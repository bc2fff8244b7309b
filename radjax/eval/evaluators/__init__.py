"""Evaluators by name (`config.eval.evaluators`, default: the task's list). Each is
built from the experiment and split, and `run(params, step, writer, out_dir)` returns
`eval/*` scalars; `run_all` writes them to `out_dir/metrics.json` too. Each reads the
default eval dataset or the one config.eval.datasets gives it (eval_sets.py)."""
import glob
import json
import math
import os

import jax
from absl import logging

from radjax.eval.evaluators import codec, codes, eval_sets, instruction, labels, loss, reports

EVALUATORS = {'loss': loss.LossEvaluator, 'reports': reports.ReportEvaluator,
              'codec': codec.CodecEvaluator, 'labels': labels.LabelEvaluator,
              'codes_loss': codes.CodesLossEvaluator, 'codes_reports': codes.CodesReportEvaluator,
              **{name: instruction.make(name) for name in instruction.SCORERS}}


def names(config, task) -> tuple[str, ...]:
  names = tuple(config.eval.evaluators) or task.evaluators
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f'config.eval.evaluators: {unknown} not in {sorted(EVALUATORS)}')
  if 'labels' in names and task is not None and not hasattr(task, 'predict'):
    # (a VLM's auxiliary label head is trained, not scored: it failed at the first eval)
    raise ValueError("config.eval.evaluators: 'labels' scores a finding classifier "
                     "(config.task='classify'); this task has no label predictions")
  eval_sets.check(config, EVALUATORS)
  return names


def datasets(config, split: str, chosen: tuple[str, ...]) -> dict:
  """The datasets the `chosen` evaluators read: EvalSet -> the evaluators reading it."""
  out = {}
  for name in chosen:
    out.setdefault(eval_sets.resolve(config, name, split), []).append(name)
  return out


def check_split(config, split: str, chosen: tuple[str, ...] = ()) -> None:
  """Each eval dataset of the `chosen` evaluators has records (a last partial batch is
  padded, pipeline.eval_dataset), and reports when they score them: checked before a run
  trains, not at its first evaluation."""
  sets = datasets(config, split, chosen) if chosen else {eval_sets.default(config, split): []}
  for s, readers in sets.items():
    if not len(s.records()):
      by = f' ({s.knob}, read by {", ".join(readers)})' if s.given else ''
      raise ValueError(f'eval split {s.split!r} of {s.dir}{by} has no records: nothing to '
                       'evaluate')
  if 'reports' in chosen:
    reports.check_split(config, split)
  for name in chosen:
    if name in instruction.SCORERS:
      instruction.check_split(config, split, name)


def make(exp, split: str) -> list:
  chosen = names(exp.config, exp.task)
  if chosen:
    check_split(exp.config, split, chosen)
    for s, readers in datasets(exp.config, split, chosen).items():
      logging.info('eval dataset of %s: %s', ', '.join(readers), s.describe(len(s.records())))
  return [EVALUATORS[n](exp, split) for n in chosen]


def split_key(key: str, split: str) -> str:
  """'eval/val_loss' -> 'eval/test_loss', 'eval/labels_auc' -> 'eval/test_labels_auc'."""
  name = key.removeprefix('eval/')
  return f"eval/{split}_{name.removeprefix('val_')}"


def run_all(evaluators, params, step: int, writer=None, out_dir: str | None = None,
            split: str = 'val') -> dict:
  """Every evaluator's scalars; a split other than 'val' names them (split_key)."""
  if out_dir is not None and jax.process_index() == 0:  # one evaluation's files, not two
    for stale in glob.glob(os.path.join(out_dir, 'predictions*.jsonl')):
      os.remove(stale)
  metrics = {}
  for ev in evaluators:
    metrics.update(ev.run(params, step, writer, out_dir))
  if split != 'val':
    metrics = {split_key(k, split): v for k, v in metrics.items()}
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump({'step': step, **json_numbers(metrics)}, f, indent=1)
  return metrics


def json_numbers(metrics: dict) -> dict:
  """NaN / inf (an AUROC of a one-class label) as null: bare NaN is no JSON."""
  return {k: (v if math.isfinite(float(v)) else None) for k, v in metrics.items()}
