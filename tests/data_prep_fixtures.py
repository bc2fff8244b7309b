"""Helpers for the data_prep builder tests: files in publishers' layouts, build, read back."""
from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import os

import numpy as np
from PIL import Image

from data_prep import build as build_lib
from radjax.data import schema, source


def txv_data(name: str) -> str:
  """A metadata file shipped in the torchxrayvision wheel (installed with --no-deps)."""
  spec = importlib.util.find_spec('torchxrayvision')
  return os.path.join(spec.submodule_search_locations[0], 'data', name)


def txv_rows(name: str, n: int | None = None) -> tuple[list[str], list[list[str]]]:
  """Header and the first n rows of a gzipped CSV from the torchxrayvision wheel."""
  with gzip.open(txv_data(name), 'rt', newline='') as f:
    reader = csv.reader(f)
    header = next(reader)
    rows = []
    for row in reader:
      rows.append(row)
      if n is not None and len(rows) >= n:
        break
  return header, rows


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def image_bytes(size=(40, 32), fmt='JPEG', mode='L', seed=0) -> bytes:
  rng = np.random.default_rng(seed)
  channels = {'L': (), 'RGB': (3,)}.get(mode, ())
  array = rng.integers(0, 255, (size[1], size[0], *channels), dtype=np.uint8)
  im = Image.fromarray(array)
  if mode not in ('L', 'RGB'):
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, format=fmt)
  return buf.getvalue()


def write_file(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def build(name: str, manual_dir: str, data_dir: str, **kwargs) -> tuple[str, dict]:
  path = build_lib.build(name, data_dir, manual_dir=manual_dir, **kwargs)
  return path, build_lib.read_manifest(path)


def examples(dataset_dir: str, split: str) -> list[dict]:
  records = source.open_split(dataset_dir, split)
  return [schema.decode(records[i]) for i in range(len(records))]


def rejects(dataset_dir: str) -> dict[str, dict]:
  with open(os.path.join(dataset_dir, 'rejects.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['id']: r for r in rows}


def raw_records(dataset_dir: str, split: str) -> list[tuple[str, bytes]]:
  """(id, record bytes) of a split, in record order."""
  records = source.open_split(dataset_dir, split)
  return [(schema.decode(records[i])['id'], bytes(records[i])) for i in range(len(records))]


def assert_same_dataset(expected: str, actual: str, info_may_differ: tuple[str, ...] = ()) -> None:
  """Two builds of one dataset (e.g. local and Beam) wrote the same thing: every file
  beside the shards byte for byte (rejects.jsonl, manifest.json, dataset_info.json but
  its `info_may_differ` keys, tokenizer ...), and per split the same ids with the same
  record bytes, sorted by id and in record order."""
  def beside(d):
    return sorted(f for f in os.listdir(d) if '.array_record-' not in f)

  def read(d, name):
    with open(os.path.join(d, name), 'rb') as f:
      data = f.read()
    if name == 'dataset_info.json' and info_may_differ:
      info = json.loads(data)
      return {k: v for k, v in info.items() if k not in info_may_differ}
    return data

  assert beside(actual) == beside(expected)
  for name in beside(expected):
    assert read(expected, name) == read(actual, name), (
      f'{name} differs between {expected} and {actual}')
  with open(os.path.join(expected, 'dataset_info.json')) as f:
    splits = [s['name'] for s in json.load(f)['splits']]
  assert splits
  for split in splits:
    want, got = raw_records(expected, split), raw_records(actual, split)
    assert len({i for i, _ in want}) == len(want), f'{split}: duplicate ids in {expected}'
    assert sorted(got) == sorted(want), f'{split}: records differ'
    assert got == want, f'{split}: same records, other order'
