"""LLaVA-format instruction JSON: RadVLM's `all_train.json` or any LLaVA-style set.

manual_dir: a folder with one or more LLaVA JSON files (a list of `{"id", "image"
(a path or a list of paths, optional), "conversations": [{"from", "value"}, ...]}`; or
`.jsonl`, one such record a line) and the images, whose paths are relative to that
folder (or to an `images/` folder in it). The split is taken from the file name:
`*train*` -> train, `*val*` / `*valid*` -> val, `*test*` -> test; a single file without
one of those words is train.

Roles: human -> user, gpt -> assistant, system -> system. Each `<image>` in the text
marks where image k goes; their count must equal the number of images (LLaVA adds a
leading `<image>` to a turn that lacks it only at training time, so a record without
any is given one at the start of its first user turn).
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

ROLES = {'human': 'user', 'user': 'user', 'gpt': 'assistant', 'assistant': 'assistant',
         'system': 'system'}
IMAGE = '<image>'


def split_of(name: str, single: bool) -> str | None:
  lower = name.lower()
  for split, words in (('train', ('train',)), ('val', ('valid', 'val', 'dev')),
                       ('test', ('test',))):
    if any(re.search(rf'(^|[^a-z]){w}', lower) for w in words):
      return split
  return 'train' if single else None


def conversation(turns, rid) -> list[dict]:
  if not isinstance(turns, list) or not turns:
    raise builder_lib.Reject('conversations: missing or empty')
  out = []
  for i, turn in enumerate(turns):
    if not isinstance(turn, dict) or not isinstance(turn.get('value'), str):
      raise builder_lib.Reject(f'conversations[{i}]: expected {{"from", "value"}}')
    role = ROLES.get(turn.get('from'))
    if role is None:
      raise builder_lib.Reject(f"conversations[{i}].from: unknown role {turn.get('from')!r}")
    out.append({'role': role, 'text': turn['value']})
  if not any(t['role'] == 'assistant' and t['text'].strip() for t in out):
    raise builder_lib.Reject('conversations: no non-empty answer')
  return out


class _BadLine(NamedTuple):
  line: int  # 1-based, in the file
  error: str


def _records(path) -> list:
  """A .json file's list of records, or a .jsonl file's one record a line (a line that is
  not JSON stays in its place as a _BadLine: rejected with its line number, not fatal)."""
  text = checks.read_text(path, path.name)
  if path.name.endswith('.jsonl'):
    out = []
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError as e:
        out.append(_BadLine(number, str(e)))
    return out
  try:
    records = json.loads(text)
  except json.JSONDecodeError as e:
    raise builder_lib.ManualDirError(f'{path.name}: expected a JSON list of records: {e}')
  if not isinstance(records, list):
    raise builder_lib.ManualDirError(f'{path.name}: expected a JSON list of records, '
                                     f'found a {type(records).__name__}')
  return records


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """LLaVA-style instruction conversations over chest radiographs."""

  name = 'llava_json'
  SOURCE = 'llava-json'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Pass the folder holding the LLaVA JSON file(s) (e.g. RadVLM all_train.json) and '
    'the images at the paths the JSON names.')

  def split_items(self, root):
    files = sorted([*root.glob('*.json'), *root.glob('*.jsonl')])
    if not files:
      raise builder_lib.ManualDirError(f'{root}: expected LLaVA *.json (or *.jsonl) files '
                                       '(e.g. all_train.json)')
    unnamed = [p.name for p in files if split_of(p.name, len(files) == 1) is None]
    if unnamed:  # their records would be in no split, counted nowhere
      raise builder_lib.ManualDirError(
        f'{root}: {unnamed} name no split; each *.json file names train, val (valid, dev) '
        'or test, or is the only one (train). Rename them, or move them out')
    out: dict[str, list] = {}
    for path in files:
      split = split_of(path.name, len(files) == 1)
      records = _records(path)
      out.setdefault(split, [])  # a file of [] is an empty split, warned of like others
      for k, rec in enumerate(records):
        ok = isinstance(rec, dict) and isinstance(rec.get('id'), (str, int))
        item = {'id': str(rec['id']) if ok else f'{path.stem}-{k}', 'file': path.name, 'row': k}
        if isinstance(rec, _BadLine):
          item['reject'] = f'line {rec.line}: not JSON ({rec.error})'
        elif not ok:
          item['reject'] = f'record {k}: not an object with an id'
        else:
          item['record'] = rec
        out.setdefault(split, []).append(item)
    if not any(out.values()):
      raise builder_lib.ManualDirError(f'{root}: its *.json / *.jsonl files hold no records')
    return out

  def make_example(self, item, split):
    rec = item['record']
    turns = conversation(rec.get('conversations'), item['id'])
    paths = rec.get('image') or []
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
      raise builder_lib.Reject(f'image: expected a path or a list of paths, got {paths!r}')
    root = epath.Path(item['root'])
    images = []
    for p in paths:
      rel = p if (root / p).exists() or not (root / 'images' / p).exists() else f'images/{p}'
      images.append(checks.read_image(root, rel)[0])
    marks = sum(t['text'].count(IMAGE) for t in turns)
    if images and marks == 0:
      first = next((t for t in turns if t['role'] == 'user'), None)
      if first is None:
        raise builder_lib.Reject('conversations: no user turn to show the image in')
      first['text'] = f'{IMAGE}\n' * len(images) + first['text']
    elif marks != len(images):
      raise builder_lib.Reject(f'{marks} {IMAGE} marks for {len(images)} images')
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=images,
                               conversation=turns)
