"""RadFM's Radiopaedia 3D sets in its published CSV / JSON layouts (HF dataset
`chaoyi-wu/RadFM_data_csv`, seeds_spec §4.3).

Configs (each also as `<name>_256`: scans resized in-plane to 256 x 256):
  vqa       `radiology_vqa_{train,test}.csv`, columns `image_path`, `question`, `answer`:
            one Example per row, a user turn (the question) and an assistant turn (the
            answer); the images go before the question.
  caption   `radiology_article_npy_{train,test}.json`, a list of {`npy_path`, `finding`,
            `impression`, `pat`, `pre`, ...}: one Example per entry, report = finding /
            impression; when the patient's presentation or history (`pat`, `pre`) is
            given, also a conversation that gives it and asks for the report.
Every scan of a case's file is one float16 3D image (data_prep/radfm/scans.py). The
files may sit in manual_dir or up to two folders below it. The CSVs hold the absolute
paths of RadFM's machines, so an image path is taken as given if it exists, else
relative to manual_dir, else by its trailing components under manual_dir
(`/mnt/x/processed_images/c_0.npy` -> `<manual_dir>/processed_images/c_0.npy`, then
`<manual_dir>/c_0.npy`). A missing or corrupt image rejects its row with the file named;
the other rows are converted.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import PurePath

import tensorflow_datasets as tfds
from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from data_prep.radfm import scans
from radjax.data import schema

SPLITS = {'train': 'train', 'test': 'test'}
FILES = {'vqa': 'radiology_vqa_{}.csv', 'caption': 'radiology_article_npy_{}.json'}
CAPTION_QUESTION = 'Please write the findings and impression for these images.'


@dataclasses.dataclass(eq=False)
class RadFMConfig(tfds.core.BuilderConfig):
  layout: str = 'vqa'  # a key of FILES
  size: int = 0  # in-plane side of each scan; 0 keeps the file's


def _configs():
  out = []
  for layout in FILES:
    out.append(RadFMConfig(name=layout, layout=layout, description=f'{layout}, scans as stored'))
    out.append(RadFMConfig(name=f'{layout}_256', layout=layout, size=256,
                           description=f'{layout}, scans resized to 256 x 256 in-plane'))
  return out


def find_file(root: epath.Path, name: str) -> epath.Path | None:
  """`name` in manual_dir or up to two folders below it (the first in sorted order)."""
  for pattern in (name, f'*/{name}', f'*/*/{name}'):
    found = sorted(root.glob(pattern))
    if found:
      return found[0]
  return None


def resolve(root: str, path: str) -> str:
  """The file an image path of RadFM's CSVs names, found as the module docstring says."""
  if not isinstance(path, str) or not path.strip():
    raise builder_lib.Reject(f'image path: empty or not a string: {path!r}')
  path = path.strip()
  if os.path.isabs(path) and os.path.isfile(path):
    return path
  parts = [p for p in PurePath(path.replace('\\', '/')).parts if p not in ('/', '')]
  for i in range(len(parts)):
    candidate = os.path.join(root, *parts[i:])
    if os.path.isfile(candidate):
      return candidate
  raise builder_lib.Reject(f'{path}: image file not found (as given, nor under the '
                           'manual_dir by its trailing path components)')


def _text(value, field: str) -> str:
  if value is None or (isinstance(value, float) and value != value):  # pandas' NaN
    return ''
  if not isinstance(value, (str, int, float)):
    raise builder_lib.Reject(f'{field}: expected text, got {type(value).__name__}')
  return ' '.join(str(value).split())


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """Radiopaedia 3D VQA and captions from RadFM's published CSV / JSON files."""

  name = 'radfm'
  SOURCE = 'radfm-radiopaedia'
  HOMEPAGE = 'https://huggingface.co/datasets/chaoyi-wu/RadFM_data_csv'
  BUILDER_CONFIGS = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Put the files of the HF dataset chaoyi-wu/RadFM_data_csv (radiology_vqa_{train,test}.csv, '
    'radiology_article_npy_{train,test}.json) and the Radiopaedia .npy volumes they name into '
    'one folder (image paths are found as given, relative to it, or by their trailing path '
    'components under it) and pass that folder.')

  def split_items(self, root):
    layout = self.builder_config.layout
    out = {}
    for split, tag in SPLITS.items():
      path = find_file(root, FILES[layout].format(tag))
      if path is not None:
        rel = os.path.relpath(os.fspath(path), os.fspath(root))
        read = self._vqa_items if layout == 'vqa' else self._caption_items
        out[split] = read(path, rel, root)
    if not out:
      raise builder_lib.ManualDirError(
        f'{root}: expected {FILES[layout].format("train")} or {FILES[layout].format("test")} '
        'in it or below it')
    return out

  def _vqa_items(self, path, rel, root):
    stem = PurePath(rel).name.split('.')[0]
    return [{'id': f'{stem}-{line:07d}', 'file': rel, 'row': line, 'record': row}
            for line, row in checks.read_csv(path, ('image_path', 'question', 'answer'), root)]

  def _caption_items(self, path, rel, root):
    del root
    stem = PurePath(rel).name.split('.')[0]
    try:
      records = json.loads(checks.read_text(path, rel))
    except json.JSONDecodeError as e:
      raise builder_lib.ManualDirError(f'{rel}: not JSON: {e}') from e
    if not isinstance(records, list):
      raise builder_lib.ManualDirError(f'{rel}: expected a JSON list of cases, got '
                                       f'{type(records).__name__}')
    items = []
    for k, rec in enumerate(records):
      item = {'id': f'{stem}-{k:07d}', 'file': rel, 'row': k}
      if isinstance(rec, dict):
        item['record'] = rec
      else:
        item['reject'] = f'{rel} entry {k}: not an object'
      items.append(item)
    return items

  def _images(self, item, key: str) -> list[dict]:
    path = resolve(item['root'], item['record'].get(key))
    cache = self.__dict__.setdefault('_scan_cache', collections.OrderedDict())
    if path not in cache:  # rows of one case are usually neighbours: convert it once
      cache[path] = scans.scan_entries(path, self.builder_config.size)
      while len(cache) > 2:
        cache.popitem(last=False)
    return cache[path]

  def make_example(self, item, split):
    rec = item['record']
    if self.builder_config.layout == 'vqa':
      question, answer = _text(rec.get('question'), 'question'), _text(rec.get('answer'),
                                                                       'answer')
      if not question or not answer:
        raise builder_lib.Reject(f"{item['file']} line {item['row']}: empty question or answer")
      images = self._images(item, 'image_path')
      return schema.make_example(
        id=item['id'], source=self.SOURCE, split=split, images=images,
        conversation=[{'role': 'user', 'text': question},
                      {'role': 'assistant', 'text': answer}])
    finding, impression = _text(rec.get('finding'), 'finding'), _text(rec.get('impression'),
                                                                      'impression')
    if not finding and not impression:
      raise builder_lib.Reject(f"{item['file']} entry {item['row']}: finding and impression "
                               'both empty')
    images = self._images(item, 'npy_path')
    history = ' '.join(t for t in (_text(rec.get('pat'), 'pat'), _text(rec.get('pre'), 'pre'))
                       if t)
    conversation = []
    if history:
      answer = ' '.join(t for t in (finding and f'Findings: {finding}',
                                    impression and f'Impression: {impression}') if t)
      conversation = [{'role': 'user', 'text': f'{history} {CAPTION_QUESTION}'},
                      {'role': 'assistant', 'text': answer}]
    return schema.make_example(
      id=item['id'], source=self.SOURCE, split=split, images=images,
      report={'findings': finding, 'impression': impression}, conversation=conversation)
