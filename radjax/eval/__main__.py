"""Report-labeling and report-scoring CLI.

  python -m radjax.eval label --reports R.jsonl --out L.jsonl
      R rows {"id", "text"} -> L rows {"id", "labels": {observation: 1|0|-1|null}}
  python -m radjax.eval score --predictions P.jsonl --out M.json [--no-meteor]
        [--per-sample S.jsonl] [--chexbert DIR] [--radgraph A.jsonl]
      P rows {"id", "generated", "reference"} -> flat JSON of clinical-efficacy
      (labeler agreement) and captioning metrics. Rows may also carry reference
      "boxes" [{"label", "box": [x1, y1, x2, y2] in [0, 1]}] (adds grounding metrics on
      boxes parsed from "generated") and "labels" [str] (adds classification metrics).
"""

from __future__ import annotations

import argparse
import json
import sys

from radjax.core import files
from radjax.data import schema
from radjax.eval.metrics import nlg_metrics, scoring
from radjax.eval.metrics.jsonl import InputError, read_jsonl
from radjax.eval.metrics.labeler import label_report
from radjax.eval.metrics.nlg_metrics import normalize


def cmd_label(args) -> None:
  files.check_outputs_apart({'--out': args.out}, {'--reports': args.reports}, InputError)
  rows = read_jsonl(args.reports, ('id', 'text'))
  _check_rows(rows, args.reports, 'report')
  with open(args.out, 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps({'id': row['id'], 'labels': label_report(row['text'])}) + '\n')
  print(f'labeled {len(rows)} reports -> {args.out}')


def _check_references(row: dict) -> str | None:
  """Why the reference or the optional reference "boxes" / "labels" of a prediction row are
  bad, if they are. A reference without words leaves nothing to score against (an empty
  generation is scored: it is counted in num_empty_generations)."""
  reference = row.get('reference')
  if isinstance(reference, str) and not normalize(reference):
    return f'reference {reference!r} has no words to score against'
  boxes = row.get('boxes', [])
  if not isinstance(boxes, list):
    return 'boxes must be a list'
  for i, b in enumerate(boxes):
    reason = schema.box_error(b, none_text=True)
    if reason is not None:
      return f'boxes[{i}]: {reason}'
  labels = row.get('labels', [])
  if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
    return 'labels must be a list of strings'
  return None


def _check_rows(rows: list[dict], path: str, what: str = 'prediction') -> None:
  """Scores (or labels) of no rows, or of rows whose ids repeat, would be numbers about
  nothing, or two answers for one id."""
  if not rows:
    raise InputError(f'{path}: no {what} rows')
  first = {}
  for n, row in enumerate(rows, 1):
    key = json.dumps(row['id'])
    if key in first:
      raise InputError(f"{path}: duplicate id {row['id']!r} (rows {first[key]} and {n})")
    first[key] = n


def cmd_score(args) -> None:
  files.check_outputs_apart({'--out': args.out, '--per-sample': args.per_sample},
                            {'--predictions': args.predictions, '--radgraph': args.radgraph},
                            InputError)
  rows = read_jsonl(args.predictions, ('id', 'generated', 'reference'), _check_references)
  _check_rows(rows, args.predictions)
  radgraph = None
  if args.radgraph:
    from radjax.eval.metrics import radgraph as radgraph_lib
    try:
      radgraph = radgraph_lib.read_annotations(args.radgraph)
    except ValueError as e:
      raise InputError(str(e)) from None
  try:
    metrics, per_row = scoring.score_rows(rows, meteor=args.meteor, text_norm=args.text_norm,
                                          chexbert=args.chexbert,
                                          radgraph=radgraph)
  except (FileNotFoundError, ValueError) as e:
    raise InputError(str(e)) from None
  with open(args.out, 'w', encoding='utf-8') as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  if args.per_sample:
    with open(args.per_sample, 'w', encoding='utf-8') as f:
      for row, scores in zip(rows, per_row):
        f.write(json.dumps({'id': row['id'], **scores}) + '\n')
  print(json.dumps(metrics, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m radjax.eval',
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True)
  label = sub.add_parser('label', help='CheXpert labels for each report')
  label.add_argument('--reports', required=True, help='JSONL with {"id", "text"} rows')
  label.add_argument('--out', required=True, help='JSONL of {id, labels}')
  label.set_defaults(func=cmd_label)
  score = sub.add_parser('score', help='clinical-efficacy and captioning metrics')
  score.add_argument('--predictions', required=True,
                     help='JSONL with {"id", "generated", "reference"} rows')
  score.add_argument('--out', required=True, help='flat metrics JSON')
  score.add_argument('--no-meteor', dest='meteor', action='store_false',
                     help='skip METEOR (needs Java)')
  score.add_argument('--per-sample', help='JSONL of per-row scores')
  score.add_argument('--text-norm', dest='text_norm', default='radjax',
                     choices=nlg_metrics.TEXT_NORMS,
                     help="text the captioning metrics see: 'radjax' (punctuation to spaces) "
                     "or 'r2gen' (R2Gen's cleaner)")
  score.add_argument('--chexbert', metavar='DIR',
                     help='CheXbert checkpoint directory: adds chexbert_* F1 (needs torch)')
  score.add_argument('--radgraph', metavar='FILE',
                     help='JSONL of RadGraph annotations per id: adds radgraph_f1_*')
  score.set_defaults(func=cmd_score)
  args = parser.parse_args(argv)
  try:
    args.func(args)
  except InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except OSError as e:  # an output path that cannot be written, a missing plug-in file
    print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
