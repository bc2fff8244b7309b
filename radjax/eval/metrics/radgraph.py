"""RadGraph F1 plug-in from precomputed annotations: off unless given a file.

RadGraph needs its own model (the `radgraph` package with weights from the Hub), which
radjax neither installs nor downloads. Run it where it is installed and pass its
output: a JSONL with one row per report pair,
  {"id": ..., "generated": <annotation>, "reference": <annotation>}
where an annotation is what radgraph.RadGraph returns for one report,
  {"text": ..., "entities": {"1": {"tokens": "effusion", "label": "OBS-DP",
                                   "relations": [["located_at", "2"]], ...}, ...}}.

Scores follow the F1RadGraph rewards of radgraph 0.1.18, the PyPI release (per report,
then averaged; upstream's unreleased July 2026 change lower-cases every token): simple =
(tokens, label) sets; partial = (tokens, label, has a relation); complete = each
relation as (tokens, label, relation, target tokens), lower-cased, and unrelated
entities as (tokens, label). A report pair with no entities on either side scores 0,
as in radgraph.
"""

from __future__ import annotations

import json

import numpy as np

from radjax.eval.metrics.jsonl import InputError, read_jsonl


def _f1(hyp: set, ref: set) -> float:
  p = len(hyp & ref) / len(hyp) if hyp else 0.0
  r = len(ref & hyp) / len(ref) if ref else 0.0
  return 2 * p * r / (p + r) if p + r else 0.0


def _simple(ann: dict) -> set:
  return {(e['tokens'], e['label']) for e in ann['entities'].values()}


def _partial(ann: dict) -> set:
  return {(e['tokens'], e['label']) + ((True,) if e['relations'] else ())
          for e in ann['entities'].values()}


def _complete(ann: dict) -> set:
  ents, out = ann['entities'], set()
  for e in ents.values():
    if not e['relations']:
      out.add((e['tokens'], e['label']))
    for rel, target in e['relations']:
      out.add((e['tokens'].lower(), e['label'], rel, ents[str(target)]['tokens'].lower()))
  return out


def report_rewards(generated: dict, reference: dict) -> tuple[float, float, float]:
  """(simple, partial, complete) F1 of one annotated report pair."""
  if not generated.get('entities') or not reference.get('entities'):
    return 0.0, 0.0, 0.0
  return tuple(_f1(f(generated), f(reference)) for f in (_simple, _partial, _complete))


def _check(ann: dict) -> None:
  ents = ann['entities']
  for e in ents.values():
    if not (isinstance(e['tokens'], str) and isinstance(e['label'], str)):
      raise TypeError('tokens and label must be strings')
    for rel, target in e['relations']:
      if not isinstance(rel, str) or not isinstance(target, (str, int)):
        raise TypeError(f'relation [{rel!r}, {target!r}]: expected [type, entity id]')
      if str(target) not in ents:
        raise KeyError(f'relation {rel!r} targets missing entity {target!r}')


def _row_problem(row: dict):
  try:
    _check(row['generated'])
    _check(row['reference'])
  except (KeyError, TypeError, AttributeError, ValueError) as e:
    return f'not a RadGraph annotation row ({e!r})'
  return None


def read_annotations(path: str) -> dict:
  """{key: (generated annotation, reference annotation)} from a JSONL file, keyed by
  annotation_key(id); a bad row, or an id given twice, is an InputError (a ValueError)
  naming the file."""
  rows = read_jsonl(path, ('id', 'generated', 'reference'), _row_problem, strings=())
  out, first = {}, {}
  for n, row in enumerate(rows, 1):
    key = annotation_key(row['id'])
    if key in first:
      raise InputError(f"{path}: duplicate id {row['id']!r} (rows {first[key]} and {n})")
    first[key] = n
    out[key] = (row['generated'], row['reference'])
  return out


def annotation_key(row_id) -> str:
  """The id as JSON: predictions' ids may be any JSON value (a list too)."""
  return json.dumps(row_id)


def radgraph_scores(pairs: list[tuple[dict, dict]]) -> dict:
  """Mean per-report "radgraph_f1_{simple,partial,complete}" over annotated pairs."""
  rewards = np.array([report_rewards(g, r) for g, r in pairs], float).reshape(-1, 3)
  out = {'radgraph_num_reports': float(len(pairs))}
  if len(pairs):
    for i, level in enumerate(('simple', 'partial', 'complete')):
      out[f'radgraph_f1_{level}'] = float(rewards[:, i].mean())
  return out
