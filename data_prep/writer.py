"""A flat ArrayRecord writer for hand-made datasets (the builders use TFDS: builder.py).

Validates Example dicts, writes the good ones into ArrayRecord shards and records the
bad ones with a reason (never a silent drop), then publishes the dataset atomically
with a manifest.json. radjax/data/source.py reads this layout as well as TFDS's.

Layout of a built dataset:
    {out_dir}/{split}-{i:05d}-of-{n:05d}.array_record
    {out_dir}/manifest.json          written last: its presence means "complete"
    {out_dir}/<extra files>          e.g. tokenizer.json
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from radjax.data import schema

MANIFEST = 'manifest.json'
# group_size:1 makes every record its own chunk, so Grain can read record k
# without decompressing its neighbours (random access for a global shuffle).
WRITER_OPTIONS = 'group_size:1'


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}.array_record'


class ShardedWriter:
  """Validates Examples and writes the valid ones round-robin into shards.

  Use as a context manager; `rejects` lists {"id", "reason"} for every example
  that failed validation or encoding, and writing carries on after a reject.
  """

  def __init__(
    self,
    out_dir: str,
    split: str,
    num_shards: int = 1,
    validate: Callable[[dict], None] = schema.validate,
  ):
    if split not in schema.SPLITS:
      raise ValueError(f'unknown split {split!r}')
    if num_shards < 1:
      raise ValueError('num_shards must be >= 1')
    self.split = split
    self.validate = validate
    self.files = [shard_name(split, i, num_shards) for i in range(num_shards)]
    self.paths = [os.path.join(out_dir, f) for f in self.files]
    self._writers = [ArrayRecordWriter(p, WRITER_OPTIONS) for p in self.paths]
    self.shard_counts = [0] * num_shards
    self.num_written = 0
    self.rejects: list[dict] = []

  def write(self, example: dict) -> bool:
    """Writes `example` if valid; returns False (and records why) if not."""
    rid = example.get('id', '<unknown>') if isinstance(example, dict) else '<unknown>'
    try:
      if example.get('split') != self.split:
        raise schema.SchemaError(
          f"record {rid!r}: split: {example.get('split')!r} written to {self.split!r}"
        )
      self.validate(example)
      raw = schema.encode(example)
    except Exception as e:  # Any failure is a reject, not a crash.
      self.rejects.append({'id': str(rid), 'reason': str(e)})
      return False
    shard = self.num_written % len(self._writers)
    self._writers[shard].write(raw)
    self.shard_counts[shard] += 1
    self.num_written += 1
    return True

  def close(self) -> None:
    for w in self._writers:
      w.close()
    self._writers = []

  def __enter__(self) -> ShardedWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _publish(tmp_dir: str, out_dir: str) -> None:
  """Moves a finished tmp_dir into place, replacing any previous out_dir.

  os.rename cannot replace a non-empty directory, so the old dataset is first
  renamed aside; at no moment does out_dir hold a mix of old and new files.
  """
  old_dir = None
  if os.path.exists(out_dir):
    old_dir = f'{out_dir}.old-{uuid.uuid4().hex[:8]}'
    os.rename(out_dir, old_dir)
  os.rename(tmp_dir, out_dir)
  if old_dir:
    shutil.rmtree(old_dir, ignore_errors=True)


def build_dataset(
  out_dir: str,
  examples_by_split: Mapping[str, Iterable[dict]] | Iterable[tuple[str, Iterable[dict]]],
  manifest_extra: Mapping[str, Any] | None = None,
  num_shards: Mapping[str, int] | int = 1,
  extra_files: Mapping[str, bytes | str] | None = None,
  validate: Callable[[dict], None] = schema.validate,
) -> dict:
  """Writes all splits into a temporary sibling dir, then renames it to out_dir.

  A crash mid-build leaves only the `.tmp-*` sibling behind: an existing good
  dataset at out_dir stays untouched and nothing half-written ever carries a
  manifest.json. `examples_by_split` is a mapping or an iterable of (split,
  examples) pairs; examples may be lazy generators. Returns the manifest.
  """
  out_dir = os.path.abspath(out_dir)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp_dir = f'{out_dir}.tmp-{uuid.uuid4().hex[:8]}'
  os.makedirs(tmp_dir)
  try:
    counts, files, shard_counts, rejects = {}, {}, {}, []
    pairs = examples_by_split
    if isinstance(pairs, Mapping):
      pairs = pairs.items()
    for split, examples in pairs:
      n = num_shards if isinstance(num_shards, int) else num_shards.get(split, 1)
      with ShardedWriter(tmp_dir, split, n, validate=validate) as writer:
        for example in examples:
          writer.write(example)
      counts[split] = writer.num_written
      files[split] = writer.files
      shard_counts[split] = writer.shard_counts
      rejects += [{'split': split, **r} for r in writer.rejects]
    for name, content in (extra_files or {}).items():
      mode = 'wb' if isinstance(content, bytes) else 'w'
      with open(os.path.join(tmp_dir, name), mode) as f:
        f.write(content)
    manifest = {
      'schema_version': schema.SCHEMA_VERSION,
      'counts': counts,
      'rejects': rejects,
      'num_rejects': len(rejects),
      'files': files,
      'shard_counts': shard_counts,
      **(manifest_extra or {}),
    }
    # Manifest last, through its own tmp + rename: it marks the dir complete.
    tmp_manifest = os.path.join(tmp_dir, MANIFEST + '.tmp')
    with open(tmp_manifest, 'w') as f:
      json.dump(manifest, f, indent=2, sort_keys=True)
    os.rename(tmp_manifest, os.path.join(tmp_dir, MANIFEST))
    _publish(tmp_dir, out_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return manifest


def read_manifest(out_dir: str) -> dict:
  with open(os.path.join(out_dir, MANIFEST)) as f:
    return json.load(f)


def read_records(path: str) -> list[bytes]:
  """All raw records of one ArrayRecord file, in order (for tests and tools)."""
  reader = ArrayRecordReader(path)
  try:
    return list(reader.read_all()) if reader.num_records() else []
  finally:
    reader.close()
