"""One split of a built dataset as a random-access source of msgpack Example records.

Every dataset is read through here, without TensorFlow or TFDS: a TFDS build (a
`dataset_info.json` beside `<name>-<split>.array_record-XXXXX-of-YYYYY` shards, from
`python -m data_prep build`) or the older flat layout (`<split>-XXXXX-of-YYYYY.array_record`).

Errors name the shard file and the record index in it. `skip_records` lets a run step
over up to N undecodable records instead of dying on the first, and drops (and counts)
the examples a run cannot use (schema.Unusable: longer than max_len, or serving none of
the dataset's tasks).
"""
import bisect
import glob
import json
import os
import threading

import grain
import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordReader

from radjax.data import schema

_TEMPLATE = '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}'


class DataError(schema.SchemaError):
  """A record or shard that cannot be read or decoded; the message says where."""


class TooLongRecord(DataError, schema.TooLong):
  """schema.TooLong with the shard file and index added: still dropped as too long."""


class NoTaskRecord(DataError, schema.NoTask):
  """schema.NoTask with the shard file and index added: still dropped."""


_LOCATED = {schema.TooLong: TooLongRecord, schema.NoTask: NoTaskRecord}


def split_files(data_dir: str, split: str, knob: str = 'config.data.dir') -> list[str]:
  """The split's shard files, in record order; errors name `knob` (where data_dir came
  from)."""
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
    why = ''
    manifest = os.path.join(data_dir, 'manifest.json')
    if os.path.exists(manifest):
      with open(manifest) as f:
        m = json.load(f)
      if split in m.get('empty_splits', []):
        why = (': its source files had no records' if not m['rejects_by_split'].get(split)
               else ': every record of it was rejected at build, see its rejects.jsonl')
    raise FileNotFoundError(f'{knob}: {data_dir!r} has no split {split!r} '
                            f'(it has {names}){why}')
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f'{knob}: {data_dir!r} is not a directory')
  files = sorted(glob.glob(os.path.join(data_dir, f'{split}-*.array_record')))
  if not files and glob.glob(os.path.join(data_dir, '*.array_record*')):
    raise FileNotFoundError(f'{knob}: no {split}-*.array_record files in {data_dir!r}')
  if not files:
    raise FileNotFoundError(f'{knob}: {data_dir!r} is no built dataset (no dataset_info.json, '
                            'no *.array_record files)')
  return files


def _rebuild(path: str) -> str:
  """What to do about a damaged shard: a build that finds its folder is reused as it is."""
  return (f'; the built dataset is damaged: delete {os.path.dirname(path)!r} and build it '
          'again (main.py rebuilds the embedded default itself, `python -m data_prep build` '
          'the others)')


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
      raise DataError(f'{path}: shard file missing{_rebuild(path)}')
    try:
      reader = ArrayRecordReader(path, 'readahead_buffer_size:0')
      try:
        return reader.num_records()
      finally:
        reader.close()
    except Exception as e:
      raise DataError(f'{path}: cannot open shard (damaged or not ArrayRecord): {e}'
                      f'{_rebuild(path)}') from e

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
      raise DataError(f'{where}: cannot read: {e}{_rebuild(self.files[shard])}') from e
    record = Record(raw)
    record.location = where
    return record

  def __getstate__(self):
    return {'files': self.files}

  def __setstate__(self, state):
    self.__init__(state['files'])

  def __repr__(self) -> str:
    return f'ShardSource({len(self.files)} files, {len(self)} records)'


class SubsetSource:
  """Some records of a source, by their indices there (a mixture component's max_records);
  each keeps its location, so errors still name its shard and index."""

  def __init__(self, parent, indices):
    self.parent = parent
    self.indices = np.asarray(indices, dtype=np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Record:
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} of {len(self)}')
    return self.parent[int(self.indices[index])]

  def __repr__(self) -> str:
    return f'SubsetSource({len(self)} of {self.parent!r})'


def read_options(threads: int) -> grain.ReadOptions:
  """Grain's read options for `threads` read threads; 0 reads in the calling thread.
  Explicit: grain's defaults (16 threads, 500 elements read ahead) would hold hundreds of
  batches of pixels in host memory. N threads read N elements (at least 2) ahead: grain
  runs no more threads at once than it reads ahead (2 kept all but 3 of 8 idle)."""
  return grain.ReadOptions(num_threads=threads,
                           prefetch_buffer_size=max(2, threads) if threads else 0)


def open_split(data_dir: str, split: str, knob: str = 'config.data.dir') -> ShardSource:
  return ShardSource(split_files(data_dir, split, knob))


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
      located = _LOCATED.get(type(e), DataError)(f'{where}: {e}')
      located.__dict__.update(vars(e))  # e.g. TooLong.truncate_helps
      raise located from e

  return wrapped


class RecordLog:
  """The records one pipeline stepped over, by where they are -> why; shared by all of its
  components, so max_skipped_records bounds the process's whole run (each process, and
  each worker process, counts its own)."""

  def __init__(self, limit: int):
    self.limit = limit
    self.bad: dict[str, str] = {}  # undecodable: counted against `limit`
    # schema.Unusable (too long, no task), by reason: dropped, never counted against it
    self.dropped: dict[str, dict[str, str]] = {}
    self._lock = threading.Lock()

  def note_bad(self, error: Exception) -> None:
    message = str(error)
    with self._lock:
      if _where(message) not in self.bad:
        self.bad[_where(message)] = message
        logging.warning('skipping undecodable record (%d of at most %d): %s',
                        len(self.bad), self.limit, message)
      if len(self.bad) > self.limit:
        raise DataError(f'{message}\n(more than config.data.max_skipped_records='
                        f'{self.limit} undecodable records)') from error

  def __getstate__(self):  # sent to Grain's worker processes, each then keeps its own
    return {k: v for k, v in self.__dict__.items() if k != '_lock'}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def get_state(self) -> dict:
    """What has been stepped over, as JSON (checkpointed with the iterator)."""
    with self._lock:
      return {'bad': dict(self.bad), 'dropped': {r: dict(d) for r, d in self.dropped.items()}}

  def add_state(self, state: dict) -> None:
    with self._lock:
      self.bad.update(state['bad'])
      for reason, seen in state['dropped'].items():
        self.dropped.setdefault(reason, {}).update(seen)

  @property
  def too_long(self) -> dict[str, str]:
    return self.dropped.get(schema.TooLong.reason, {})

  def note_dropped(self, error: schema.Unusable) -> None:
    message = str(error)
    with self._lock:
      seen = self.dropped.setdefault(error.reason, {})
      if _where(message) not in seen:
        seen[_where(message)] = message
        n = len(seen)
        if n <= 3 or n & (n - 1) == 0:  # the first few, then at powers of two
          logging.info('dropping a record (%s, %d so far): %s', error.reason, n, message)


class IteratorWithRecordLog(grain.DatasetIterator):
  """`it` whose checkpointed state also holds the RecordLog, so a resumed run counts the
  records skipped before it against config.data.max_skipped_records (and data/dropped_*
  goes on from its count). Records the read-ahead noted past the checkpoint are noted again
  on resume under the same key, so nothing is counted twice."""

  KEY = 'radjax_record_log'

  def __init__(self, it, log: RecordLog):
    super().__init__()
    self._it, self._log = it, log

  def __next__(self):
    return next(self._it)

  def get_state(self) -> dict:
    return {**self._it.get_state(), self.KEY: self._log.get_state()}

  def set_state(self, state: dict) -> None:
    state = dict(state)
    saved = state.pop(self.KEY, None)  # absent in checkpoints from before it was kept
    self._it.set_state(state)
    if saved:
      self._log.add_state(saved)

  def refuses(self, states: list) -> str | None:
    """The wrapped iterator's reason not to resume from these (other processes') states."""
    refuses = getattr(self._it, 'refuses', None)
    if refuses is None:
      return None
    return refuses([{k: v for k, v in s.items() if k != self.KEY} for s in states])

  def start_prefetch(self) -> None:
    if hasattr(self._it, 'start_prefetch'):
      self._it.start_prefetch()

  def close(self) -> None:
    if hasattr(self._it, 'close'):
      self._it.close()


def _where(message: str) -> str:
  return message.split(': ', 1)[0]


# Unusable examples in a row that mean (almost) nothing fits: stop, don't spin.
TOO_LONG_IN_A_ROW = 1000


class _SkipRecords(grain.MapDataset):
  """Element i, or if it cannot be used, the next element that can: one that fails to
  read or decode (a bad record, at most `log.limit` of them; 0: the error stops the run)
  or one this run cannot use (schema.Unusable: too long for max_len, or serving none of
  its tasks; dropped, however many).

  The replacement is a function of the index alone, so a resumed run sees the same
  stream. Each record stepped over is logged once and counted in `log`.
  """

  def __init__(self, parent: grain.MapDataset, log: RecordLog):
    super().__init__(parent)
    self.log = log

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f'SkipRecords(limit={self.log.limit})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._usable(index)[0]

  def _usable(self, index) -> tuple:
    """(the first usable element from `index` on, how many were stepped over)."""
    bad = too_long = 0
    offset = 0
    while True:
      try:
        return self._parent[index + offset], offset
      except schema.Unusable as e:
        self.log.note_dropped(e)
        too_long += 1
        if too_long >= TOO_LONG_IN_A_ROW:
          if not isinstance(e, schema.TooLong):
            hint = 'give the dataset tasks its records can serve'
          elif e.truncate_helps:
            hint = ('raise config.data.max_len (or config.data.max_target_tokens, where '
                    "it is set) or set config.data.too_long='truncate'")
          else:
            hint = ('raise config.data.max_len (or config.data.max_target_tokens, where '
                    'it is set)')
          raise DataError(f'{too_long} examples in a row from element {index} cannot be used '
                          f'(the last: {e}); {hint}') from e
      except schema.SchemaError as e:
        if not self.log.limit:
          raise
        self.log.note_bad(e)
        bad += 1
        if bad > self.log.limit:
          raise DataError(f'{bad} undecodable records in a row from element {index}') from e
      offset += 1


# Host keys of an eval batch: 1 for a row that is a record of the split, 0 for padding;
# the row's record index in the split (what an evaluator names it by).
EVAL_MASK = 'eval_mask'
EVAL_INDEX = 'eval_index'


class _EvalPass(_SkipRecords):
  """One ordered pass over `parent`, `size` elements (its length rounded up to whole
  batches): element i is parent[i] with EVAL_MASK 1. Past the end, or where parent[i]
  cannot be used (logged as _SkipRecords logs it), it is the next usable element with
  EVAL_MASK 0: a placeholder of the right shapes that evaluators do not count. So each
  record counts once, and every process has the same number of whole batches."""

  def __init__(self, parent: grain.MapDataset, log: RecordLog, size: int):
    super().__init__(parent, log)
    self._size = size

  def __len__(self) -> int:
    return self._size

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    n = len(self._parent)
    example, offset = self._usable(index % n)
    return {**example, EVAL_MASK: np.float32(index < n and not offset),
            EVAL_INDEX: np.int32(index % n)}


def eval_pass(ds: grain.MapDataset, log: RecordLog, batch_size: int) -> grain.MapDataset:
  """`ds` once in order, padded to whole batches of `batch_size` (_EvalPass)."""
  if not len(ds):
    raise DataError('the eval split has no records')
  return _EvalPass(ds, log, -(-len(ds) // batch_size) * batch_size)


def skip_records(ds: grain.MapDataset, log: RecordLog) -> grain.MapDataset:
  """Steps over bad records (up to log.limit) and too-long ones; without any, element i
  is ds[i]."""
  return _SkipRecords(ds, log)


def record_log(ds: grain.MapDataset) -> RecordLog | None:
  """The RecordLog of a pipeline built with skip_records (searched through its parents)."""
  todo = [ds]
  while todo:
    d = todo.pop()
    if isinstance(d, _SkipRecords):
      return d.log
    todo.extend(getattr(d, 'parents', ()))
  return None
