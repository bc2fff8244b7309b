"""One split of a built dataset as a random-access source of msgpack Example records.

Every dataset is read through here, without TensorFlow or TFDS: a TFDS build (a
`dataset_info.json` beside `<name>-<split>.array_record-XXXXX-of-YYYYY` shards, from
`python -m data_prep build`) or the older flat layout (`<split>-XXXXX-of-YYYYY.array_record`).

Errors name the shard file and the record index in it. `skip_bad_records` lets a run
step over up to N undecodable records instead of dying on the first.
"""
import bisect
import glob
import json
import os
import threading

import grain
from absl import logging
from array_record.python.array_record_module import ArrayRecordReader

from radjax.data import schema

_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


class DataError(schema.SchemaError):
  """A record or shard that cannot be read or decoded; the message says where."""


def split_files(data_dir: str, split: str) -> list[str]:
  """The split's shard files, in record order."""
  info_path = os.path.join(data_dir, 'dataset_info.json')
  if os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
    for s in info.get('splits', []):
      if s['name'] == split:
        n = len(s.get('shardLengths', []))
        template = s.get('filepathTemplate') or _TEMPLATE
        return [os.path.join(data_dir, template.replace('{DATASET}', info['name'])
                             .replace('{SPLIT}', split)
                             .replace('{FILEFORMAT}', info.get('fileFormat', 'array_record'))
                             .replace('{SHARD_X_OF_Y}', f'{i:05d}-of-{n:05d}'))
                for i in range(n)]
    names = [s['name'] for s in info.get('splits', [])]
    raise FileNotFoundError(f'config.data.dir: {data_dir!r} has no split {split!r} '
                            f'(it has {names})')
  files = sorted(glob.glob(os.path.join(data_dir, f'{split}-*.array_record')))
  if not files:
    raise FileNotFoundError(f'config.data.dir: no {split}-*.array_record files in {data_dir!r}')
  return files


class Record(bytes):
  """A record's bytes that know where they came from, for error messages."""
  location: str = ''


class ShardSource:
  """Random access over a split's shards (grain's RandomAccessDataSource protocol)."""

  def __init__(self, files: list[str]):
    self.files = list(files)
    self._lengths = [self._count(f) for f in self.files]
    self._starts = [0]
    for n in self._lengths:
      self._starts.append(self._starts[-1] + n)
    self._readers: dict[int, ArrayRecordReader] = {}
    self._lock = threading.Lock()

  @staticmethod
  def _count(path: str) -> int:
    if not os.path.exists(path):
      raise DataError(f'{path}: shard file missing')
    try:
      reader = ArrayRecordReader(path, 'readahead_buffer_size:0')
      try:
        return reader.num_records()
      finally:
        reader.close()
    except Exception as e:
      raise DataError(f'{path}: cannot open shard (damaged or not ArrayRecord): {e}') from e

  def __len__(self) -> int:
    return self._starts[-1]

  def locate(self, index: int) -> tuple[str, int]:
    """Global record index -> (shard file, index in that shard)."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return self.files[shard], index - self._starts[shard]

  def _reader(self, shard: int) -> ArrayRecordReader:
    with self._lock:
      if shard not in self._readers:
        # As grain's ArrayRecordDataSource: no readahead, small buffer (random access).
        self._readers[shard] = ArrayRecordReader(self.files[shard], 'readahead_buffer_size:0',
                                                 file_reader_buffer_size=32768)
      return self._readers[shard]

  def __getitem__(self, index: int) -> Record:
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} of {len(self)}')
    shard = bisect.bisect_right(self._starts, index) - 1
    local = index - self._starts[shard]
    where = f'{self.files[shard]} record {local}'
    try:
      raw = self._reader(shard).read([local])[0]
    except Exception as e:
      raise DataError(f'{where}: cannot read: {e}') from e
    record = Record(raw)
    record.location = where
    return record

  def __getstate__(self):
    return {'files': self.files}

  def __setstate__(self, state):
    self.__init__(state['files'])

  def __repr__(self) -> str:
    return f'ShardSource({len(self.files)} files, {len(self)} records)'


def open_split(data_dir: str, split: str) -> ShardSource:
  return ShardSource(split_files(data_dir, split))


def locate_errors(fn):
  """Wraps fn(record, *args) so that its data errors name the shard file and index."""

  def wrapped(raw, *args):
    try:
      return fn(raw, *args)
    except DataError:
      raise
    except schema.SchemaError as e:
      where = getattr(raw, 'location', '')
      if not where:
        raise
      raise DataError(f'{where}: {e}') from e

  return wrapped


class _SkipBadRecords(grain.MapDataset):
  """Element i, or if it fails to read or decode, the next element that does.

  The replacement is a function of the index alone, so a resumed run sees the same
  stream. Distinct bad records are logged once each and counted; one more than
  `limit` stops the run.
  """

  def __init__(self, parent: grain.MapDataset, limit: int):
    super().__init__(parent)
    self._limit = limit
    self._bad: dict[str, str] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f'SkipBadRecords(limit={self._limit})'

  @property
  def skipped(self) -> dict[str, str]:
    """Where each skipped record is -> why it was skipped."""
    return dict(self._bad)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    for offset in range(self._limit + 1):
      try:
        return self._parent[index + offset]
      except schema.SchemaError as e:
        self._note(e)
    raise DataError(f'{self._limit + 1} undecodable records in a row from element {index}')

  def _note(self, error: Exception) -> None:
    message = str(error)
    where = message.split(': ', 1)[0]
    with self._lock:
      if where not in self._bad:
        self._bad[where] = message
        logging.warning('skipping undecodable record (%d of at most %d): %s',
                        len(self._bad), self._limit, message)
      if len(self._bad) > self._limit:
        raise DataError(f'{message}\n(more than config.data.max_skipped_records='
                        f'{self._limit} undecodable records)') from error


def skip_bad_records(ds: grain.MapDataset, limit: int) -> grain.MapDataset:
  """ds unchanged when limit is 0 (the first bad record stops the run)."""
  return _SkipBadRecords(ds, limit) if limit > 0 else ds
