"""`python -m data_prep show`: what a build wrote, one JSON object per Example."""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from radjax.data import schema, source


def describe_image(image: dict) -> dict:
  """An image entry as format, kind and size (never its bytes)."""
  out = {k: image.get(k) for k in ('format', 'kind', 'spacing')}
  out['num_bytes'] = len(image.get('data') or b'')
  try:
    if image.get('format') == 'npy':
      array = np.load(io.BytesIO(image['data']), allow_pickle=False)
      out['shape'], out['dtype'] = list(array.shape), str(array.dtype)
    else:
      with Image.open(io.BytesIO(image['data'])) as im:
        out['size'], out['mode'] = list(im.size), im.mode
  except Exception as e:  # show must still print the rest of the record
    out['error'] = str(e)
  return out


def describe(example: dict) -> dict:
  return {**example, 'images': [describe_image(im) for im in example['images']]}


def iter_examples(dataset_dir: str, split: str, limit: int | None = None) -> Iterator[dict]:
  if limit is not None and limit < 0:
    raise ValueError(f'limit {limit}: must be at least 0')
  try:
    records = source.open_split(dataset_dir, split, 'dataset dir')
  except FileNotFoundError:
    below = sorted(glob.glob(os.path.join(dataset_dir, '**', 'manifest.json'), recursive=True))
    if not os.path.exists(os.path.join(dataset_dir, 'manifest.json')) and below:
      dirs = ', '.join(os.path.dirname(p) for p in below[:3])
      raise FileNotFoundError(f'{dataset_dir!r} is not a dataset dir; the ones below it: '
                              f'{dirs}') from None
    raise
  n = len(records) if limit is None else min(limit, len(records))
  for i in range(n):
    raw = records[i]
    try:
      yield schema.decode(raw)
    except schema.SchemaError as e:
      raise source.DataError(f'{raw.location}: {e}') from e


def show(dataset_dir: str, split: str, limit: int | None, out) -> int:
  n = 0
  for example in iter_examples(dataset_dir, split, limit):
    out.write(json.dumps(describe(example), ensure_ascii=False) + '\n')
    n += 1
  return n
