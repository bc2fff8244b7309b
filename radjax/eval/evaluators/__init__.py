"""Evaluators by name (`config.eval.evaluators`, default: the task's list). Each is
built from the experiment and split, and `run(params, step, writer, out_dir)` returns
`eval/*` scalars; `run_all` writes them to `out_dir/metrics.json` too."""
import json
import os

import jax

from radjax.data import mixture, source
from radjax.eval.evaluators import codec, codes, instruction, labels, loss, reports

EVALUATORS = {'loss': loss.LossEvaluator, 'reports': reports.ReportEvaluator,
              'codec': codec.CodecEvaluator, 'labels': labels.LabelEvaluator,
              'codes_loss': codes.CodesLossEvaluator, 'codes_reports': codes.CodesReportEvaluator,
              **{name: instruction.make(name) for name in instruction.SCORERS}}


def names(config, task) -> tuple[str, ...]:
  names = tuple(config.eval.evaluators) or task.evaluators
  unknown = [n for n in names if n not in EVALUATORS]
  if unknown:
    raise ValueError(f'config.eval.evaluators: {unknown} not in {sorted(EVALUATORS)}')
  return names


def check_split(config, split: str, chosen: tuple[str, ...] = ()) -> None:
  """The eval split holds at least one batch, and reports when the `chosen` evaluators
  score them: checked before a run trains, not at its first evaluation."""
  data_dir = mixture.eval_dir(config)
  n, b = len(source.open_split(data_dir, split)), config.eval.batch_size
  if n < b:
    raise ValueError(f'eval split {split!r} of {data_dir} has {n} records, fewer than '
                     f'config.eval.batch_size ({b}): nothing to evaluate. Lower '
                     'config.eval.batch_size or set config.eval.split to a larger split.')
  if 'reports' in chosen:
    reports.check_split(config, split)


def make(exp, split: str) -> list:
  chosen = names(exp.config, exp.task)
  if chosen:
    check_split(exp.config, split, chosen)
  return [EVALUATORS[n](exp, split) for n in chosen]


def split_key(key: str, split: str) -> str:
  """'eval/val_loss' -> 'eval/test_loss', 'eval/labels_auc' -> 'eval/test_labels_auc'."""
  name = key.removeprefix('eval/')
  return f"eval/{split}_{name.removeprefix('val_')}"


def run_all(evaluators, params, step: int, writer=None, out_dir: str | None = None,
            split: str = 'val') -> dict:
  """Every evaluator's scalars; a split other than 'val' names them (split_key)."""
  metrics = {}
  for ev in evaluators:
    metrics.update(ev.run(params, step, writer, out_dir))
  if split != 'val':
    metrics = {split_key(k, split): v for k, v in metrics.items()}
  if out_dir is not None and jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
      json.dump({'step': step, **metrics}, f, indent=1)
  return metrics
