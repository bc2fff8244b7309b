"""Sequence packing (config.data.pack): several examples share one row of max_len tokens,
so short examples stop paying for a row of padding.

Each processed example (radjax/data/processors.py, padded to max_len) is cut to its real
length and its real images, then Grain's first-fit packer fills rows of each shard's
stream (below). A packed row has `segment_ids` (0 = padding, 1.. = its examples in order) and
`positions` (restarting at 0 for each example); the decoder attends within a segment only
(radjax/models/layers.py segment_mask), so every example's loss is the one it has unpacked.
A VLM row has config.data.pack_max_examples x config.data.max_images image slots holding its
examples' real images in order, so the k-th placeholder of the row still takes the k-th
image (radjax/models/vlm.py splice).

Which examples share a row depends on which examples one packer sees, so the global stream
is cut into config.data.pack_shards shards (default: the process count of the run that
starts), shard s holding its elements s, s + S, s + 2S, ...; each shard is packed on its
own into groups of B / S rows (B = config.train.batch_size), and batch k is the k-th group
of every shard. Process p of P runs shards p S/P .. (p + 1) S/P - 1, its batch being their
groups in shard order, so batch k holds the same rows on any P that divides S: a
checkpoint resumes on such a P (the shards' states merged: radjax/core/checkpoint.py). The
iterator's state is each shard packer's (its stream's next index at the last emitted
group, the row within it) and the shard count, which a resumed run keeps.
"""
import functools
from typing import Callable

import grain
import numpy as np
from absl import logging

from radjax.data import pixels, processors, source

TEXT = ('tokens', 'targets', 'loss_mask')  # [max_len] per example
# [max_images, ...] per example: only the real ones pack (a pixel table with its image)
IMAGES = ('images', 'pixel_table', 'image_mask')
TILES = ('tile_index', 'tile_weight')  # AnyRes plans, per image slot too
HOST = ('source', 'truncated')  # host-only scalars per example -> [pack_max_examples], -1 pads
# Keys a packed example may not have, and the knob that adds them.
UNPACKABLE = {'labels': 'config.data.label_loss_weight', 'label_mask':
              'config.data.label_loss_weight', 'depth_mask': "a 'volume' mixture component"}


def max_examples(config) -> int:
  k = config.data.get('pack_max_examples', 0)
  if k < 1:
    raise ValueError(f'config.data.pack_max_examples={k} must be >= 1')
  return k


def trim(example: dict, image_id: int | None = None) -> dict:
  """A padded example -> its real part: tokens through its last loss-bearing target (later
  tokens change no loss: attention is causal), its real images whose placeholders (of
  `image_id`) those tokens keep, host scalars as [1]."""
  for key, knob in UNPACKABLE.items():
    if key in example:
      raise ValueError(f'config.data.pack=True cannot pack {key!r} (from {knob}); '
                       'turn one of them off')
  weighted = np.flatnonzero(example['loss_mask'])
  length = int(weighted[-1]) + 1 if len(weighted) else 1
  out = {k: example[k][:length] for k in TEXT}
  if 'image_mask' in example:
    n = _images_kept(example, out['tokens'], image_id)
    out.update({k: example[k][:n] for k in IMAGES + TILES if k in example})
  out.update({k: np.asarray([example[k]], np.int32) for k in HOST if k in example})
  return out


def _images_kept(example: dict, kept, image_id: int | None) -> int:
  """How many of the example's real images have their placeholders in `kept`, its trimmed
  tokens. One after the last loss-bearing target (max_len cut just after its placeholders,
  before the answer) leaves with them: in a packed row the next example's would take it."""
  n = int(np.sum(example['image_mask']))
  if image_id is None or not n:
    return n
  counts = processors.image_token_counts(example)  # AnyRes: each image's own
  if counts is None:  # the same for every image, whose runs the example holds whole
    counts = [int(np.sum(example['tokens'] == image_id)) // n] * n
  return int(np.sum(np.cumsum(counts) <= np.sum(kept == image_id)))


def pack(config, ds: grain.MapDataset, rows: int, image_id: int | None
         ) -> grain.IterDataset:
  """One shard's example stream -> packed rows (an IterDataset, batched by the caller into
  `rows` per batch: the packer fills `rows` bins at a time, so one packed group is one
  batch). `image_id`: the placeholder id of examples with image slots (a VLM's), None
  without. Read threads (config.data.worker_threads, for each shard) decode ahead of the
  packer."""
  c = config.data
  k = max_examples(config)
  it = ds.map(functools.partial(trim, image_id=image_id))
  it = it.to_iter_dataset(source.read_options(c.worker_threads))
  lengths = {**{key: c.max_len for key in TEXT}, **{key: k for key in HOST}}
  padding = {**{key: 0 for key in TEXT}, **{key: -1 for key in HOST}}
  if image_id is not None:
    keys = (IMAGES if pixels.mode_of(config) != 'float32' else
            tuple(k for k in IMAGES if k != pixels.TABLE))
    keys += TILES if config.model.get('anyres_grids', ()) else ()
    lengths.update({key: k * c.max_images for key in keys})
    padding.update({key: 0 for key in keys})
  packed = grain.experimental.FirstFitPackIterDataset(
      it, length_struct=lengths, padding_struct=padding, num_packing_bins=rows,
      max_sequences_per_bin=k, shuffle_bins=False)  # the stream is shuffled already
  return packed.map(_rekey)


def shard_count(config, process_count: int) -> int:
  """The shards a fresh packed stream is cut into: config.data.pack_shards, 0 meaning the
  process count (then each process packs its own slice, as one packer per process does)."""
  shards = config.data.get('pack_shards', 0) or process_count
  b = config.train.batch_size
  if shards < 1 or shards % process_count or b % shards:
    raise ValueError(f'config.data.pack_shards={shards}: a multiple of the {process_count} '
                     f'processes that divides config.train.batch_size={b} (0: the process '
                     'count)')
  return shards


def sharded(config, ds: grain.MapDataset, process_index: int, process_count: int,
            image_id: int | None) -> 'ShardedPack':
  """The global example stream `ds` -> this process's packed batches of
  config.train.batch_size / process_count rows (the module docstring)."""
  max_examples(config)
  batch = config.train.batch_size

  def make(shard: int, shards: int) -> grain.IterDataset:
    rows = batch // shards
    return pack(config, ds[shard::shards], rows, image_id).batch(rows, drop_remainder=True)

  return ShardedPack(make, shard_count(config, process_count), process_index, process_count)


class ShardedPack(grain.IterDataset):
  """This process's batches: the groups of its shards of the packed stream, concatenated in
  shard order. make(shard, shards) is one shard's stream of groups."""

  def __init__(self, make: Callable[[int, int], grain.IterDataset], shards: int,
               process_index: int, process_count: int):
    self.make, self.shards = make, shards
    self.process_index, self.process_count = process_index, process_count
    # Parents: what source.record_log searches (the shards share one record log).
    super().__init__([make(s, shards) for s in _own(shards, process_index, process_count)])

  def __iter__(self) -> '_ShardedPackIterator':
    return _ShardedPackIterator(self)

  def __str__(self) -> str:
    return f'ShardedPack(shards={self.shards}, process={self.process_index}/{self.process_count})'


def _own(shards: int, process_index: int, process_count: int) -> range:
  per = shards // process_count
  return range(process_index * per, (process_index + 1) * per)


STATE_SHARDS, STATE_STATES = 'pack_shards', 'shard_states'


class _ShardedPackIterator(grain.DatasetIterator):
  """State: {'pack_shards': S, 'shard_states': {'<s>': shard s's packer state}} holding this
  process's shards; the states of several processes merge into one that any process count
  dividing S resumes from (each process takes its shards' states)."""

  def __init__(self, ds: ShardedPack):
    super().__init__()
    self._ds = ds
    self._shards = ds.shards
    self._its = None  # made at the first batch or set_state: a resumed run may re-shard

  def _iterators(self) -> dict:
    if self._its is None:
      ds = self._ds
      self._its = {s: iter(ds.make(s, self._shards))
                   for s in _own(self._shards, ds.process_index, ds.process_count)}
    return self._its

  def __next__(self) -> dict:
    parts = [next(it) for it in self._iterators().values()]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict:
    return {STATE_SHARDS: self._shards,
            STATE_STATES: {str(s): it.get_state() for s, it in self._iterators().items()}}

  def set_state(self, state: dict) -> None:
    ds = self._ds
    if STATE_STATES not in state:  # a checkpoint from before shards: one packer per process
      state = {STATE_SHARDS: ds.process_count,
               STATE_STATES: {str(ds.process_index): state}}
    why = self.refuses([state])
    if why:
      raise ValueError(why)
    if state[STATE_SHARDS] != self._shards:
      logging.info('packed stream: the checkpoint cut it into %d shards (this run would cut '
                   '%d); it goes on with %d', state[STATE_SHARDS], self._shards,
                   state[STATE_SHARDS])
      self._shards, self._its = state[STATE_SHARDS], None
    for s, it in self._iterators().items():
      it.set_state(state[STATE_STATES][str(s)])

  def refuses(self, states: list) -> str | None:
    """Why these iterator states (each process's, of a checkpoint written by another number
    of processes) cannot resume here; None when they can."""
    count = self._ds.process_count
    for state in states:
      if STATE_STATES not in state:
        return ('its packed stream was saved before radjax kept packed shards (each process '
                'packed its own slice), so it resumes on its own process count only')
      shards = state[STATE_SHARDS]
      if shards % count:
        return (f'its packed stream is cut into {shards} shards (config.data.pack_shards; 0: '
                f'the process count it started on), which {count} processes cannot share; '
                f'resume on a process count that divides {shards}')
    return None


def _rekey(row: dict) -> dict:
  """Grain's per-feature `<key>_segment_ids` / `<key>_positions` -> the token ones as
  `segment_ids` / `positions`; the others are implied by them."""
  out = {k: v for k, v in row.items() if not k.endswith(('_segment_ids', '_positions'))}
  out['segment_ids'] = row['tokens_segment_ids']
  out['positions'] = row['tokens_positions']
  return out


def examples_per_row(batch: dict) -> np.ndarray:
  """[rows]: how many examples each packed row holds (its segments count 1, 2, ...)."""
  return np.max(batch['segment_ids'], axis=-1)


def host_scalars(batch: dict) -> dict:
  """Packed-batch statistics: mean examples per row and the share of padding slots."""
  return {'data/examples_per_row': float(np.mean(examples_per_row(batch))),
          'data/padding': float(np.mean(batch['segment_ids'] == 0))}
