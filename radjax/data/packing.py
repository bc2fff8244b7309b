"""Sequence packing (config.data.pack): several examples share one row of max_len tokens,
so short examples stop paying for a row of padding.

Each processed example (radjax/data/processors.py, padded to max_len) is cut to its real
length and its real images, then Grain's first-fit packer fills rows of the per-process
stream. A packed row has `segment_ids` (0 = padding, 1.. = its examples in order) and
`positions` (restarting at 0 for each example); the decoder attends within a segment only
(radjax/models/layers.py segment_mask), so every example's loss is the one it has unpacked.
A VLM row has config.data.pack_max_examples x config.data.max_images image slots holding its
examples' real images in order, so the k-th placeholder of the row still takes the k-th
image (radjax/models/vlm.py splice).

The packer's state (the stream's next index and the row within the packed group) is part
of the iterator's checkpoint, so a resumed run continues the same packed rows.
"""
import grain
import numpy as np

from radjax.data import source

TEXT = ('tokens', 'targets', 'loss_mask')  # [max_len] per example
IMAGES = ('images', 'image_mask')  # [max_images, ...] per example: only the real ones pack
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


def trim(example: dict) -> dict:
  """A padded example -> its real part: tokens through its last loss-bearing target (later
  tokens change no loss: attention is causal), its real images, host scalars as [1]."""
  for key, knob in UNPACKABLE.items():
    if key in example:
      raise ValueError(f'config.data.pack=True cannot pack {key!r} (from {knob}); '
                       'turn one of them off')
  weighted = np.flatnonzero(example['loss_mask'])
  length = int(weighted[-1]) + 1 if len(weighted) else 1
  out = {k: example[k][:length] for k in TEXT}
  if 'image_mask' in example:
    n = int(np.sum(example['image_mask']))
    out.update({k: example[k][:n] for k in IMAGES + TILES if k in example})
  out.update({k: np.asarray([example[k]], np.int32) for k in HOST if k in example})
  return out


def pack(config, ds: grain.MapDataset, rows: int, images: bool) -> grain.IterDataset:
  """This process's example stream -> packed rows (an IterDataset, batched by the caller
  into `rows` per batch: the packer fills `rows` bins at a time, so one packed group is one
  batch). `images`: the examples carry image slots (a VLM's). Read threads
  (config.data.worker_threads) decode ahead of the packer."""
  c = config.data
  k = max_examples(config)
  it = ds.map(trim).to_iter_dataset(source.read_options(c.worker_threads))
  lengths = {**{key: c.max_len for key in TEXT}, **{key: k for key in HOST}}
  padding = {**{key: 0 for key in TEXT}, **{key: -1 for key in HOST}}
  if images:
    keys = IMAGES + (TILES if config.model.get('anyres_grids', ()) else ())
    lengths.update({key: k * c.max_images for key in keys})
    padding.update({key: 0 for key in keys})
  packed = grain.experimental.FirstFitPackIterDataset(
      it, length_struct=lengths, padding_struct=padding, num_packing_bins=rows,
      max_sequences_per_bin=k, shuffle_bins=False)  # the stream is shuffled already
  return packed.map(_rekey)


def _rekey(row: dict) -> dict:
  """Grain's per-feature `<key>_segment_ids` / `<key>_positions` -> the token ones as
  `segment_ids` / `positions`; the others are implied by them."""
  out = {k: v for k, v in row.items() if not k.endswith(('_segment_ids', '_positions'))}
  out['segment_ids'] = row['tokens_segment_ids']
  out['positions'] = row['tokens_positions']
  return out


def host_scalars(batch: dict) -> dict:
  """Packed-batch statistics: mean examples per row and the share of padding slots."""
  return {'data/examples_per_row': float(np.mean(np.max(batch['segment_ids'], axis=-1))),
          'data/padding': float(np.mean(batch['segment_ids'] == 0))}
