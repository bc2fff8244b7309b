"""Report-labeling and report-scoring CLI.

  python -m radjax.eval label --reports R.jsonl --out L.jsonl
      R rows {"id", "text"} -> L rows {"id", "labels": {observation: 1|0|-1|null}}
  python -m radjax.eval score --predictions P.jsonl --out M.json [--no-meteor]
      P rows {"id", "generated", "reference"} -> flat JSON of clinical-efficacy
      (labeler agreement) and captioning metrics
"""

from __future__ import annotations

import argparse
import json
import sys

from radjax.eval import scoring
from radjax.eval.labeler import label_report


class InputError(ValueError):
  """A malformed input row; the message names file and line."""


def read_jsonl(path: str, required: tuple[str, ...]) -> list[dict]:
  """Rows of a JSON-lines file; blank lines are skipped, bad rows are an InputError."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise InputError(f"{path}:{n}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise InputError(f"{path}:{n}: expected a JSON object")
      missing = [k for k in required if k not in row]
      if missing:
        raise InputError(f"{path}:{n}: missing {', '.join(missing)}")
      bad = [k for k in required if k != "id" and not isinstance(row[k], str)]
      if bad:
        raise InputError(f"{path}:{n}: {', '.join(bad)} must be a string")
      rows.append(row)
  return rows


def cmd_label(args) -> None:
  rows = read_jsonl(args.reports, ("id", "text"))
  with open(args.out, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps({"id": row["id"], "labels": label_report(row["text"])}) + "\n")
  print(f"labeled {len(rows)} reports -> {args.out}")


def cmd_score(args) -> None:
  rows = read_jsonl(args.predictions, ("id", "generated", "reference"))
  metrics = scoring.score_reports([r["generated"] for r in rows],
                                  [r["reference"] for r in rows], meteor=args.meteor)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  print(json.dumps(metrics, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m radjax.eval",
                                   description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  label = sub.add_parser("label", help="CheXpert labels for each report")
  label.add_argument("--reports", required=True, help='JSONL with {"id", "text"} rows')
  label.add_argument("--out", required=True, help="JSONL of {id, labels}")
  label.set_defaults(func=cmd_label)
  score = sub.add_parser("score", help="clinical-efficacy and captioning metrics")
  score.add_argument("--predictions", required=True,
                     help='JSONL with {"id", "generated", "reference"} rows')
  score.add_argument("--out", required=True, help="flat metrics JSON")
  score.add_argument("--no-meteor", dest="meteor", action="store_false",
                     help="skip METEOR (needs Java)")
  score.set_defaults(func=cmd_score)
  args = parser.parse_args(argv)
  try:
    args.func(args)
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
