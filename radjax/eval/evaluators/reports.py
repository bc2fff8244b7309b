"""Generated reports: decoding as config.eval says, report metrics, the demo's
finding-level F1 against the record labels, predictions.jsonl."""
import functools
import json
import os

import jax
import numpy as np

from radjax.data import instructions, pixels, schema
from radjax.eval.evaluators import answers, eval_sets
from radjax.eval.metrics import classification, scoring
from radjax.eval.metrics.labeler import label_report

OBSERVATION_TO_FINDING = {obs: f for f, obs in schema.DEMO_FINDINGS.items()}


def _first_view(arrays: dict) -> np.ndarray:
  """The first image [H, W, C] (a volume: its middle real slice; AnyRes tiles: the base
  tile) for TensorBoard, as the tower sees it."""
  x = pixels.as_floats(arrays)['images'][0]
  if 'tile_index' in arrays:
    x = x[0]
  if 'depth_mask' in arrays:
    x = x[:, :, int(arrays['depth_mask'][0].sum()) // 2]
  return x


def report_findings(text: str) -> set[str]:
  """The demo findings the rule-based labeler reads as positive or uncertain in `text`."""
  labels = label_report(text)
  return {f for obs, f in OBSERVATION_TO_FINDING.items() if labels[obs] in (1, -1)}


def true_findings(example: dict) -> set[str]:
  """From the record's labels where it has them, else from its reference report; an
  uncertain (-1) label counts as positive, as it does on the generated side."""
  labels = example.get('labels') or {}
  if any(k in labels for k in OBSERVATION_TO_FINDING):
    return {f for obs, f in OBSERVATION_TO_FINDING.items() if labels.get(obs) in (1, -1)}
  report = example.get('report') or {}
  return report_findings(f"{report.get('findings', '')}. {report.get('impression', '')}")


def finding_scores(predicted: list[set[str]], truth: list[set[str]]) -> dict[str, float]:
  """Per-finding and micro/macro P/R/F1 over the 5 demo findings, plus a constant
  baseline: the micro F1 of always predicting every finding (the best constant
  predictor for F1)."""
  findings = list(OBSERVATION_TO_FINDING.values())
  out = classification.multilabel_scores(predicted, truth, labels=findings)
  pos, size = sum(len(set(t) & set(findings)) for t in truth), len(truth) * len(findings)
  out['baseline_all_positive_micro_f1'] = 2 * pos / (pos + size) if size else 0.0
  return out


def first_examples(records, n: int, keep) -> list[dict]:
  """The first n records (decoded) for which keep(example) holds, in order."""
  out = []
  for i in range(len(records)):
    if len(out) >= n:
      break
    example = schema.decode(records[i])
    if keep(example):
      out.append(example)
  return out


def examples_with_reports(records, n: int, section: str = 'both') -> list[dict]:
  """The first n records with a report (of `section`, the report_section the model was
  trained to write) to score against (VQA records have none): as the other evaluators
  take the first n that serve their task (of the first n, those with one: fewer)."""
  return first_examples(records, n, lambda ex: _reference(ex, section))


def check_split(config, split: str) -> None:
  """Before training: the eval split has reports to score generated ones against."""
  n, s = config.eval.num_generate, eval_sets.resolve(config, 'reports', split)
  section = instructions.options_from_config(config.data.task_options).report_section
  if n and not examples_with_reports(s.records(), 1, section):
    wanted = 'findings or impression' if section in ('both', 'joined') else section
    raise ValueError(
      f"config.eval.evaluators has 'reports' but no record of split "
      f'{s.split!r} of {s.dir} has a report ({wanted}) to score against; '
      "evaluate without it, e.g. --config.eval.evaluators=\"('loss',)\"")


class ReportEvaluator:

  @functools.cached_property
  def records(self):
    """The split's records, opened on first use (reporting on given images needs none)."""
    return self.eval_set.records()

  @functools.cached_property
  def examples(self) -> list[dict]:
    return examples_with_reports(self.records, self.exp.config.eval.num_generate,
                                 self.options.report_section)

  def __init__(self, exp, split: str, name: str = 'reports'):
    self.exp = exp
    self.split = split
    self.eval_set = eval_sets.resolve(exp.config, name, split)
    self.options = instructions.options_from_config(
        exp.config.data.task_options, exp.config.data.get('codebook_size', 0))
    # A model trained on bare report text (no request) is prompted the same way.
    tasks = self.eval_set.tasks
    self.report_task = 'report_text' if 'report_text' in tasks and 'report' not in tasks \
        else 'report'
    self.answerer = answers.Answerer(exp)

  def reference(self, example: dict) -> str:
    """What the model was trained to write for `example`: the report section(s)
    config.data.task_options.report_section names (LLM-CXR stage 2: the impression;
    XrayGPT and RadVLM: the findings), not always both."""
    return _reference(example, self.options.report_section)

  def prompt_turns(self, example: dict) -> list[dict]:
    """The report request (wording variant 0) for `example`."""
    return report_request(example, self.options, self.report_task)

  def generate(self, params, examples: list[dict]) -> list[str]:
    """Reports for `examples` decoded as config.eval says."""
    return self.answerer.answer(params, [(ex, self.prompt_turns(ex)) for ex in examples])

  def run(self, params, step: int, writer=None, out_dir: str | None = None) -> dict:
    cfg = self.exp.config
    metrics = {}
    examples = self.examples
    n = len(examples)
    generated = self.generate(params, examples) if n else []
    references = [self.reference(ex) for ex in examples]
    predicted = [report_findings(g) for g in generated]
    truth = [true_findings(ex) for ex in examples]
    norm = cfg.eval.get('text_norm', 'radjax')
    per_sample = scoring.per_sample_scores(generated, references, norm)
    if n:
      scores = finding_scores(predicted, truth)
      metrics.update({f'finding_{k}': v for k, v in scores.items()})
      metrics.update(scoring.score_reports(generated, references, meteor=cfg.eval.meteor,
                                           text_norm=norm))
    metrics = {f'eval/{k}': v for k, v in metrics.items()}
    if writer is not None and n:
      k = min(cfg.eval.num_logged_examples, n)
      task = self.exp.task
      slots = task.slots_for(examples[:k]) if hasattr(task, 'slots_for') else task.image_slots
      imgs = np.stack([_first_view(slots(ex, None)) for ex in examples[:k]])
      imgs = (imgs - imgs.min()) / max(float(imgs.max() - imgs.min()), 1e-6)
      writer.write_images(step, {'eval/images': imgs})
      writer.write_texts(step, {f'eval/report_{i}': f'GENERATED: {generated[i]}\n\n'
                                f'REFERENCE: {references[i]}' for i in range(k)})
    if out_dir is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, 'predictions.jsonl'), 'w') as f:
        for ex, g, r, p, t, s in zip(examples, generated, references, predicted, truth,
                                     per_sample):
          turns = self.prompt_turns(ex)
          prompt = turns[-1]['text'] if turns else ''
          f.write(json.dumps({'id': ex['id'], 'prompt': prompt, 'generated': g, 'reference': r,
                              'predicted_findings': sorted(p), 'true_findings': sorted(t),
                              **s}) + '\n')
    return metrics


def report_request(example: dict, options, task: str = 'report') -> list[dict]:
  """The prompt turns of a report task (variant 0), whatever the record holds."""
  stub = {**example, 'report': {'findings': '-', 'impression': '-'}}
  turns = instructions.TASKS[task](stub, None, options)
  return instructions.reference(turns)[0]


def _reference(example: dict, section: str = 'both') -> str:
  return instructions.report_answer(example, section) or ''
