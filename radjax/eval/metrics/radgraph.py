"""RadGraph F1 plug-in from precomputed annotations: off unless given a file.

RadGraph needs its own model (the `radgraph` package with weights from the Hub), which
radjax neither installs nor downloads. Run it where it is installed and pass its
output: a JSONL with one row per report pair,
  {"id": ..., "generated": <annotation>, "reference": <annotation>}
where an annotation is what radgraph.RadGraph returns for one report,
  {"text": ..., "entities": {"1": {"tokens": "effusion", "label": "OBS-DP",
                                   "relations": [["located_at", "2"]], ...}, ...}}.

Scores follow radgraph's F1RadGraph rewards (per report, then averaged): simple =
(tokens, label) sets; partial = (tokens, label, has a relation); complete = each
relation as (tokens, label, relation, target tokens), lower-cased, and unrelated
entities as (tokens, label). A report pair with no entities on either side scores 0,
as in radgraph.
"""

from __future__ import annotations

import numpy as np

from radjax.eval.metrics.jsonl import read_jsonl


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
  """{id: (generated annotation, reference annotation)} from a JSONL file; a bad row
  is an InputError (a ValueError) naming file and line."""
  rows = read_jsonl(path, ('id', 'generated', 'reference'), _row_problem, strings=())
  return {row['id']: (row['generated'], row['reference']) for row in rows}


def radgraph_scores(pairs: list[tuple[dict, dict]]) -> dict:
  """Mean per-report "radgraph_f1_{simple,partial,complete}" over annotated pairs."""
  rewards = np.array([report_rewards(g, r) for g, r in pairs], float).reshape(-1, 3)
  out = {'radgraph_num_reports': float(len(pairs))}
  if len(pairs):
    for i, level in enumerate(('simple', 'partial', 'complete')):
      out[f'radgraph_f1_{level}'] = float(rewards[:, i].mean())
  return out
