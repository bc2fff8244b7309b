"""Evaluators of one instruction task: the first config.eval.num_generate held-out records
the task can serve are asked its question (wording variant 0), and the answers are
scored against the reference answer parsed the same way (radjax/data/instructions.py
writes labels and boxes so the metric parsers read them back exactly).

  classification   CheXpert findings named in the answer: P/R/F1 micro and macro
  grounding        boxes of one named finding (abnormality_grounding): mAP@0.5, mean IoU
  anatomical_grounding
                   boxes of one anatomical region (Chest ImaGenome's): mAP@0.5, mean IoU
  detection        every box of every finding: mAP@0.5, mean IoU
  phrase_grounding boxes of a quoted phrase: mAP@0.5, mean IoU
  vqa              closed yes/no questions: accuracy

Each reads the default eval dataset or its own (config.eval.datasets, eval_sets.py).
"""
import dataclasses
import functools
import json
import os

import jax

from radjax.data import instructions, schema
from radjax.eval.evaluators import answers, eval_sets
from radjax.eval.metrics import classification, grounding


def _classification(generated, references, examples) -> dict:
  del examples
  truth = [classification.parse_labels(r)[0] for r in references]
  return classification.classification_scores(generated, truth)


def _grounding(prefix: str, by_class: bool = True):
  """by_class=False (phrase grounding: the phrase is given, its box is what is asked):
  boxes match whatever finding the answer names (one that echoed the phrase, 'The left
  lower lobe consolidation is at [...]', scored 0 against the unnamed reference)."""
  def score(generated, references, examples) -> dict:
    # Every class the records' boxes have is a name to read (VinDr-CXR's own classes are
    # no CheXpert observation): a box answered with another class is read as that class.
    classes = sorted({b.get('label') or '' for ex in examples for b in ex.get('boxes') or []}
                     - {''})
    refs = [grounding.parse_boxes(r, classes)[0] for r in references]
    preds = [grounding.parse_prediction(g, ref, classes)[0] for g, ref in zip(generated, refs)]
    if not by_class:
      refs, preds = ([[{**b, 'label': ''} for b in row] for row in rows]
                     for rows in (refs, preds))
    out = grounding.grounding_scores(preds, refs)
    return {k.replace('grounding_', f'{prefix}_', 1): v for k, v in out.items()
            if '/' not in k}
  return score


def _yes(text: str) -> bool | None:
  words = text.strip().lower().split()
  if not words:
    return None
  first = words[0].strip('.,;:!?()[]*"\'`…')  # '"Yes."', '(Yes)', '**Yes**', 'Yes?'
  return True if first == 'yes' else False if first == 'no' else None


def _vqa(generated, references, examples) -> dict:
  del examples
  pairs = [(_yes(g), _yes(r)) for g, r in zip(generated, references)]
  scored = [(g, r) for g, r in pairs if r is not None]
  return {'vqa_accuracy': sum(g == r for g, r in scored) / max(len(scored), 1),
          'vqa_unanswered': float(sum(g is None for g, _ in scored))}


# evaluator name -> (instruction task, scorer)
SCORERS = {
    'classification': ('classification', _classification),
    'grounding': ('abnormality_grounding', _grounding('grounding')),
    'anatomical_grounding': ('anatomical_grounding', _grounding('anatomical_grounding')),
    'detection': ('detection', _grounding('detection')),
    'phrase_grounding': ('phrase_grounding', _grounding('phrase_grounding', by_class=False)),
    'vqa': ('vqa', _vqa),
}


def serving(records, task: str, options, n: int) -> list[tuple[dict, list[dict], str]]:
  """(example, prompt turns, reference answer) of the first n records `task` serves."""
  out = []
  for i in range(len(records)):
    if len(out) >= n:
      break
    example = schema.decode(records[i])
    turns = instructions.TASKS[task](example, None, options)
    if turns is not None:
      prompt, answer = instructions.reference(turns)
      out.append((example, prompt, answer))
  return out


def unserved(name: str, eval_set) -> str:
  s = eval_set
  return (f'config.eval.evaluators has {name!r} but no record of split {s.split!r} of '
          f'{s.dir} ({s.knob}) can serve instruction task {SCORERS[name][0]!r}')


def check_split(config, split: str, name: str) -> None:
  """Before training: some record of the split serves the evaluator's task (it failed at
  the first evaluation, after eval_every steps)."""
  if not config.eval.num_generate:
    return
  s = eval_sets.resolve(config, name, split)
  options = instructions.options_from_config(config.data.task_options,
                                             config.data.get('codebook_size', 0))
  if not serving(s.records(), SCORERS[name][0], dataclasses.replace(options, vqa_questions=1),
                 1):
    raise ValueError(unserved(name, s))


class InstructionEvaluator:

  def __init__(self, exp, split: str, name: str):
    self.exp, self.split, self.name = exp, split, name
    self.task, self.score = SCORERS[name]
    self.eval_set = eval_sets.resolve(exp.config, name, split)
    self.options = instructions.options_from_config(
        exp.config.data.task_options, exp.config.data.get('codebook_size', 0))
    # One question a record: with vqa_questions > 1 the prompt held the earlier questions'
    # reference answers (labels of related findings) before the one scored.
    self.options = dataclasses.replace(self.options, vqa_questions=1)
    self.answerer = answers.Answerer(exp)

  @functools.cached_property
  def items(self) -> list[tuple[dict, list[dict], str]]:
    """(example, prompt turns, reference answer) of the first records the task serves."""
    return serving(self.eval_set.records(), self.task, self.options,
                   self.exp.config.eval.num_generate)

  def run(self, params, step: int, writer=None, out_dir: str | None = None) -> dict:
    del step, writer
    items = self.items
    if not items:
      raise ValueError(unserved(self.name, self.eval_set))
    generated = self.answerer.answer(params, [(ex, p) for ex, p, _ in items])
    references = [a for _, _, a in items]
    scores = self.score(generated, references, [ex for ex, _, _ in items])
    metrics = {f'eval/{k}': v for k, v in scores.items()}
    if out_dir is not None and jax.process_index() == 0:
      os.makedirs(out_dir, exist_ok=True)
      with open(os.path.join(out_dir, f'predictions_{self.name}.jsonl'), 'w') as f:
        for (ex, prompt, ref), g in zip(items, generated):
          f.write(json.dumps({'id': ex['id'], 'prompt': prompt[-1]['text'] if prompt else '',
                              'generated': g, 'reference': ref}) + '\n')
    return metrics


def make(name: str):
  return functools.partial(InstructionEvaluator, name=name)
