"""The TFDS builder every radiology dataset derives from.

A dataset module `data_prep/<name>/<name>_dataset_builder.py` defines `Builder`, a
subclass of `RadjaxBuilder` with two methods:

    split_items(root) -> {split: [item, ...]}    cheap metadata only: CSV rows, file paths
    make_example(item, split) -> Example dict     the expensive part: read and check images

`item` is a plain dict with at least `id`, `file` (source file, relative to the manual
dir) and `row` (line or row number there); an item carrying `reject` is rejected with
that reason. Anything `make_example` raises, and every `schema.validate` failure,
rejects the item: it goes to `rejects.jsonl` with id, split, file, row and reason, is
counted in `manifest.json`, and the build carries on. A later item with the id of an
earlier good one is rejected as a duplicate (per split; first in item order wins).
A dataset of several views lists `view_configs(...)` as its BUILDER_CONFIGS (`default`,
`frontal`) and leaves out of `split_items` the items `keeps_view` says no to: not
rejects, counted per split in the manifest's `filtered_by_view`.

Shards are TFDS ArrayRecord files whose records are msgpack Examples
(radjax.data.schema), not tf.train.Examples: `MsgpackExampleWriter` unwraps them, so
radjax reads them without TensorFlow or TFDS (radjax/data/source.py). The same code runs
locally (a generator) or on Beam (`--beam_runner`), and both give the same records in
the same order: records are keyed by their item's index and written unshuffled.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_prep import downscale
from radjax.data import schema

MANIFEST = 'manifest.json'
REJECTS = 'rejects.jsonl'
_PARTS = '.rejects-parts'

FEATURES = tfds.features.FeaturesDict({
  'id': tfds.features.Text(doc='Example id, unique within the split'),
  'example': tfds.features.Tensor(
    shape=(), dtype=np.object_, doc='msgpack-encoded Example (radjax/data/schema.py)'),
})


class Reject(ValueError):
  """Raised by make_example: the item is rejected with this reason."""


class ManualDirError(FileNotFoundError):
  """manual_dir does not hold the dataset as its publisher distributes it."""


class MsgpackExampleWriter(tfds.core.writer.ExampleWriter):
  """Writes each record's msgpack Example bytes instead of the tf.train.Example."""

  def write(self, path, examples):
    from tensorflow_datasets.proto import tf_example_pb2  # build time only

    def unwrap():
      for key, serialized in examples:
        proto = tf_example_pb2.Example.FromString(serialized)
        yield key, proto.features.feature['example'].bytes_list.value[0]

    return super().write(path, unwrap())


def process_item(builder: RadjaxBuilder, split: str, index: int, item: dict,
                 example: dict | None = None) -> dict:
  """One item (or its ready Example) -> {'record': bytes, ...} or {'reason': str, ...}."""
  out = {'split': split, 'index': index, 'id': str(item.get('id') or ''),
         'file': item.get('file', ''), 'row': item.get('row')}
  try:
    if item.get('reject'):
      raise Reject(item['reject'])
    if example is None:
      example = builder.make_example(item, split)
    example = downscale.downscale_example(example, builder.max_short_side)
    schema.validate(example, require_text=builder.REQUIRE_TEXT)
    out['id'] = example['id']
    out['record'] = schema.encode(example)
  except Exception as e:  # every failure is a reject with its reason, never a crash
    out['reason'] = str(e) or type(e).__name__
  return out


def resolve_duplicates(results: Iterable[dict]) -> list[dict]:
  """Results sharing an id: the first good one (by index) wins, later good ones are rejected."""
  out, winner = [], None
  for r in sorted(results, key=lambda r: r['index']):
    if 'record' in r:
      if winner is None:
        winner = r
      else:
        r = {k: v for k, v in r.items() if k != 'record'}
        r['reason'] = (f"record {r['id']!r}: id: duplicate of {winner['file']} "
                       f"row {winner['row']}")
    out.append(r)
  return out


def reject_row(result: dict) -> dict:
  return {k: result[k] for k in ('id', 'split', 'file', 'row', 'reason')}


def tfds_example(result: dict, count: int) -> tuple[int, dict]:
  """(key, example): keys keep the items' order (shuffling is off) spread over TFDS's
  2**128 key range, so a split over TFDS's 1 GB buffer spills into its 1,000 temp buckets
  evenly; index keys all fell in bucket 0, read back whole (tensorflow/datasets#3491)."""
  return result['index'] * (2**128 // max(count, 1)), {'id': result['id'],
                                                       'example': result['record']}


@dataclasses.dataclass(frozen=True)
class CappedShardConfig(tfds.core.utils.shard_utils.ShardConfig):
  """--num_shards at most one shard per record on the local path, where TFDS would fail
  on a split smaller than it; Beam drops its empty shards by itself (precise=False)."""

  def get_number_shards(self, total_size: int, num_examples: int,
                        uses_precise_sharding: bool = True) -> int:
    n = super().get_number_shards(total_size, num_examples, uses_precise_sharding)
    return min(n, max(num_examples, 1)) if uses_precise_sharding else n


@dataclasses.dataclass(eq=False)
class _CappedDownloadConfig(tfds.download.DownloadConfig):

  def get_shard_config(self):
    return CappedShardConfig(num_shards=self.num_shards, min_shard_size=self.min_shard_size,
                             max_shard_size=self.max_shard_size)


def capped_shards(config: tfds.download.DownloadConfig) -> tfds.download.DownloadConfig:
  """`config` whose shard count is capped at a split's records (CappedShardConfig)."""
  if config.num_shards is not None and config.num_shards < 1:
    raise ValueError(f'num_shards {config.num_shards}: must be at least 1')
  return _CappedDownloadConfig(**{f.name: getattr(config, f.name)
                                  for f in dataclasses.fields(config)})


# How TFDS's Beam writer says a split came out empty.
_BEAM_EMPTY_SPLIT = re.compile(r'generated examples is 0 for split (\w+)')


def _warn_empty(name: str, split: str, rows: list[dict]) -> None:
  logging.warning('%s: every one of the %d records of split %r was rejected (e.g. %s); '
                  'building the other splits without it.', name, len(rows), split,
                  rows[0]['reason'] if rows else '-')


@dataclasses.dataclass(eq=False)
class ViewConfig(tfds.core.BuilderConfig):
  """A config that keeps some views of the films only: `views`, the values of the
  dataset's own view field kept (empty: every view). RadjaxBuilder.keeps_view applies it."""
  views: tuple[str, ...] = ()


def view_configs(frontal: tuple[str, ...], description: str) -> list[ViewConfig]:
  """BUILDER_CONFIGS of a dataset of several views: `default`, every view, and `frontal`,
  the views `frontal` only (written to OUT/<name>/default/ and OUT/<name>/frontal/)."""
  return [ViewConfig(name='default', description='every view'),
          ViewConfig(name='frontal', views=frontal, description=description)]


def _unpickled_builder(module: str, qualname: str) -> RadjaxBuilder:
  cls = importlib.import_module(module)
  for part in qualname.split('.'):
    cls = getattr(cls, part)
  return cls.__new__(cls)  # pickle then calls __setstate__, which runs TFDS's __init__


class RadjaxBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: manual_dir check, item processing, rejects, manifest."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  SOURCE = ''  # Example.source
  HOMEPAGE = ''
  REQUIRED_FILES: tuple[str, ...] = ()  # relative to manual_dir; checked before anything
  REQUIRE_TEXT = True  # False for label- or box-only datasets
  DESCRIPTION = ''

  def __init__(self, *, file_format=None, max_short_side: int | None = None, **kwargs):
    # radjax reads ArrayRecord shards only; `tfds build` asks for TFDS's default
    # (TFRecord) unless told otherwise.
    if file_format not in (None, 'array_record', tfds.core.FileFormat.ARRAY_RECORD):
      raise ValueError(f'{self.name}: file_format {file_format!s}: radjax datasets are '
                       "written as 'array_record' only (radjax/data/source.py reads those)")
    downscale.check_side(max_short_side, self.name)
    super().__init__(file_format='array_record', **kwargs)
    self.max_short_side = max_short_side
    self._original_state['max_short_side'] = max_short_side  # Beam workers unpickle it
    self._split_names: list[str] = []
    self._empty_splits: dict[str, list[dict]] = {}  # split -> its reject rows
    self._new_empty_splits: dict[str, list[dict]] = {}
    self._filtered_by_view: dict[str, int] = {}  # split -> items keeps_view left out

  def drop_empty_splits(self, error: Exception | None = None) -> bool:
    """After a failed build: True when it failed because splits had every record
    rejected and others are left; they are then left out of the next try (their rejects
    kept for rejects.jsonl and the manifest). On Beam the split is the one TFDS's `error`
    names; its rejects are found again on the next try (None until then)."""
    new, self._new_empty_splits = self._new_empty_splits, {}
    found = (_BEAM_EMPTY_SPLIT.search(str(error or ''))
             if getattr(self, '_use_beam', False) else None)
    if found and found.group(1) in self._split_names and found.group(1) not in new:
      new[found.group(1)] = None
    new = {k: v for k, v in new.items() if k not in self._empty_splits}
    self._empty_splits.update(new)
    if not new or not set(self._split_names) - set(self._empty_splits):
      return False
    for split, rows in new.items():
      if rows is not None:
        _warn_empty(self.name, split, rows)
    return True

  def _drop_itemless(self, items: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Splits with no items at all (a header-only CSV) are left out like all-rejected
    ones, before generation; every split without items is an error."""
    empty = [split for split, rows in items.items() if not rows]
    if empty and len(empty) == len(items):
      raise ValueError(f'{self.name}: no split has records in its source files '
                       f'({", ".join(empty)})')
    for split in empty:
      if split not in self._empty_splits:
        logging.warning('%s: split %r has no records in its source files; building the '
                        'other splits without it.', self.name, split)
      self._empty_splits[split] = []
    return items

  def __reduce__(self):
    # `tfds build data_prep/NAME` imports this module as NAME.NAME_dataset_builder, with
    # data_prep/ on sys.path in its own process only: Beam workers, which unpickle the
    # builder, import it by its name inside the data_prep package instead.
    module = type(self).__module__
    if module == f'{self.name}.{self.name}_dataset_builder':
      module = f'data_prep.{module}'
    return _unpickled_builder, (module, type(self).__qualname__), self.__getstate__()

  def split_items(self, root: epath.Path) -> dict[str, list[dict]]:
    raise NotImplementedError

  def keeps_view(self, view: str, split: str) -> bool:
    """Whether an item of this view is in the build: False where the config (ViewConfig)
    keeps other views only. An item left out is not a reject; it is counted per split in
    the manifest's `filtered_by_view` (and the build's summary). Ask it of items that are
    not rejected otherwise: a broken row is a reject in every config."""
    views = getattr(self.builder_config, 'views', ())
    if not views or view in views:
      return True
    self._filtered_by_view[split] = self._filtered_by_view.get(split, 0) + 1
    return False

  def make_example(self, item: dict, split: str) -> dict:
    raise NotImplementedError

  def extra_files(self) -> dict[str, str | bytes]:
    """Files written beside the shards (e.g. a tokenizer)."""
    return {}

  def manifest_extra(self) -> dict[str, Any]:
    return {}

  def observe_written(self, split: str, example: dict) -> None:
    """Sees every written Example of each split, in record order, once the shards are
    written and before extra_files / manifest_extra: summaries of what the shards hold
    (the demos' finding counts and terms.txt) come out the same on the local path and
    on Beam, where items are processed in other processes."""

  def _observe_shards(self) -> None:
    if type(self).observe_written is RadjaxBuilder.observe_written:
      return  # nothing to summarize: skip reading the shards back
    from array_record.python.array_record_module import ArrayRecordReader
    for name, split in self.info.splits.items():
      for path in split.filepaths:
        reader = ArrayRecordReader(os.fspath(path))
        try:
          for i in range(reader.num_records()):
            self.observe_written(name, schema.decode(reader.read([i])[0]))
        finally:
          reader.close()

  # --- TFDS hooks ---------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.DESCRIPTION or (self.__doc__ or '').strip(), features=FEATURES,
      homepage=self.HOMEPAGE or None, disable_shuffling=True)

  def _example_writer(self):
    return MsgpackExampleWriter(file_format=self.info.file_format)

  def check_manual_dir(self, manual_dir) -> epath.Path:
    root = epath.Path(manual_dir) if manual_dir else None
    if root is None or not root.exists():
      raise ManualDirError(f'{self.name}: manual_dir {manual_dir!s} does not exist.\n'
                           f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    for rel in self.REQUIRED_FILES:
      if not (root / rel).exists():
        raise ManualDirError(
          f'{self.name}: {root} does not look like the dataset: expected {rel} in it.\n'
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return root

  def _split_generators(self, dl_manager):
    root = self.check_manual_dir(dl_manager.manual_dir)
    self._filtered_by_view = {}  # counted again on every try
    items = self._drop_itemless(self.split_items(root))
    self._split_names = list(items)
    for split_items in items.values():
      for item in split_items:
        item.setdefault('root', os.fspath(root))  # travels with the item to Beam workers
    for split, rows in self._empty_splits.items():  # found empty on an earlier try
      split_items = items.pop(split, [])
      if rows is None:  # on Beam: its rejects again, here (every one of them is one)
        rows = [reject_row(r) for r in self.process_items(split, split_items)
                if 'record' not in r]
        self._empty_splits[split] = rows
        _warn_empty(self.name, split, rows)
      self._write_reject_part(f'{split}.jsonl', rows)
    # Smallest split first: a split that turns out empty costs a retry of the smaller ones only.
    items = dict(sorted(items.items(), key=lambda kv: len(kv[1])))
    return {split: self._generate_examples(split, split_items)
            for split, split_items in items.items()}

  def _generate_examples(self, split: str, items: list[dict]):
    if self._use_beam:
      return self._beam_examples(split, items)
    return self._local_examples(split, items)

  def _download_and_prepare(self, dl_manager, download_config):
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    super()._download_and_prepare(dl_manager, capped_shards(download_config))
    self._finalize()

  # --- generation -----------------------------------------------------------------

  def process_items(self, split: str, items: list[dict]) -> Iterator[dict]:
    """Local path: process_item over the items in order (the demo overrides it)."""
    for index, item in enumerate(items):
      yield process_item(self, split, index, item)

  def _local_examples(self, split: str, items: list[dict]) -> Iterator[tuple[int, dict]]:
    winners: dict[str, dict] = {}
    rejects = []
    for r in self.process_items(split, items):
      if 'record' in r and r['id'] in winners:
        r = resolve_duplicates([winners[r['id']], r])[1]
      if 'record' in r:
        winners[r['id']] = {k: r[k] for k in ('index', 'id', 'file', 'row')} | {'record': b''}
        yield tfds_example(r, len(items))
      else:
        rejects.append(reject_row(r))
    self._write_reject_part(f'{split}.jsonl', rejects)
    if not winners:
      self._new_empty_splits[split] = rejects
      raise ValueError(f'{self.name}: every one of the {len(rejects)} records of split {split!r} '
                       'was rejected, e.g. ' + '; '.join(r['reason'] for r in rejects[:3]))

  def _beam_examples(self, split: str, items: list[dict]):
    beam = tfds.core.lazy_imports.apache_beam
    parts = os.fspath(self.data_path / _PARTS / split)
    builder = self

    @beam.ptransform_fn
    def generate(pipeline):
      results = (
        pipeline
        | 'items' >> beam.Create(list(enumerate(items)))
        | 'process' >> beam.MapTuple(lambda i, item: process_item(builder, split, i, item))
        | 'by_id' >> beam.Map(lambda r: (r['id'], r))
        | 'group' >> beam.GroupByKey()
        | 'dedup' >> beam.FlatMap(lambda kv: resolve_duplicates(kv[1])))
      _ = (results
           | 'rejected' >> beam.Filter(lambda r: 'record' not in r)
           | 'reject_rows' >> beam.Map(lambda r: json.dumps(reject_row(r), sort_keys=True))
           | 'write_rejects' >> beam.io.WriteToText(parts, file_name_suffix='.jsonl'))
      return (results
              | 'kept' >> beam.Filter(lambda r: 'record' in r)
              | 'to_tfds' >> beam.Map(tfds_example, len(items)))

    return generate()  # pylint: disable=no-value-for-parameter

  def _view_manifest(self) -> dict[str, Any]:
    """A ViewConfig's views and, per split, the items left out for their view."""
    if not isinstance(self.builder_config, ViewConfig):
      return {}
    filtered = self._filtered_by_view
    return {'views': list(self.builder_config.views),
            'filtered_by_view': {s: filtered.get(s, 0)
                                 for s in [*self.info.splits.keys(), *self._empty_splits,
                                           *filtered]}}

  def _write_reject_part(self, name: str, rows: list[dict]) -> None:
    path = self.data_path / _PARTS
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))

  def _finalize(self) -> None:
    """Merges the reject parts into rejects.jsonl and writes manifest.json and extra files."""
    parts = self.data_path / _PARTS
    rows = []
    if parts.exists():
      for p in sorted(parts.glob('*.jsonl')):
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
      for p in parts.glob('*'):
        p.unlink()
      parts.rmdir()
    order = {s: i for i, s in enumerate(schema.SPLITS)}
    rows.sort(key=lambda r: (order.get(r['split'], 9), r['file'], r['row'] or 0, r['id']))
    (self.data_path / REJECTS).write_text(
      ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
    self._observe_shards()
    for name, content in self.extra_files().items():
      if isinstance(content, bytes):
        (self.data_path / name).write_bytes(content)
      else:
        (self.data_path / name).write_text(content)
    splits = self.info.splits
    manifest = {
      'dataset': self.name,
      'version': str(self.version),
      'config': self.builder_config.name if self.builder_config else None,
      'source': self.SOURCE,
      'schema_version': schema.SCHEMA_VERSION,
      'counts': {name: splits[name].num_examples for name in splits.keys()}
                | {name: 0 for name in self._empty_splits},
      'empty_splits': sorted(self._empty_splits),
      'num_rejects': len(rows),
      'rejects_by_split': {s: sum(r['split'] == s for r in rows)
                           for s in [*splits.keys(), *self._empty_splits]},
      'rejects_file': REJECTS,
      'max_short_side': self.max_short_side,
      **self._view_manifest(),
      **self.manifest_extra(),
    }
    (self.data_path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
