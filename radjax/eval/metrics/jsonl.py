"""JSON-lines input with errors that name the file and line."""

from __future__ import annotations

import json


class InputError(ValueError):
  """A malformed input row; the message names file and line."""


def read_jsonl(path: str, required: tuple[str, ...], check=None,
               strings: tuple[str, ...] | None = None) -> list[dict]:
  """Rows of a JSON-lines file; blank lines are skipped, bad rows are an InputError.

  `check(row)` may return a further reason the row is bad. `strings`: the keys whose
  values must be strings (default: every required key but "id").
  """
  rows = []
  try:
    with open(path, 'rb') as f:
      # A byte-order mark (Windows tools write one) is not part of the first row.
      raw_lines = f.read().removeprefix(b'\xef\xbb\xbf').split(b'\n')
  except OSError as e:
    raise InputError(f'{path}: cannot read ({e.strerror or e})') from None
  for n, raw in enumerate(raw_lines, 1):
    try:
      line = raw.decode('utf-8')
    except UnicodeDecodeError as e:
      raise InputError(f'{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line)') from None
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError as e:
      raise InputError(f'{path}:{n}: not valid JSON ({e.msg})') from None
    if not isinstance(row, dict):
      raise InputError(f'{path}:{n}: expected a JSON object')
    missing = [k for k in required if k not in row]
    if missing:
      raise InputError(f"{path}:{n}: missing {', '.join(missing)}")
    must = [k for k in required if k != 'id'] if strings is None else strings
    bad = [k for k in must if not isinstance(row[k], str)]
    if bad:
      raise InputError(f"{path}:{n}: {', '.join(bad)} must be a string")
    reason = check(row) if check else None
    if reason:
      raise InputError(f'{path}:{n}: {reason}')
    rows.append(row)
  return rows
