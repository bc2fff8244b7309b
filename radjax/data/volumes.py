"""3D image entries (kind '3d': float16 `npy` arrays [rows, cols, slices] in [0, 1], as
data_prep/volume_ops.py `to_entry` stores them) -> model input for a 'vit3d' tower.

As RadFM's collators (src/train.py, src/test.py) prepare a sample: every scan is resized
by nearest voxel (`F.interpolate`'s default mode: output k reads input floor(k * n /
target) on each axis) to size x size x T, where T is the multiple of the depth patch
nearest the sample's deepest scan (a tie goes to the smaller; at least one patch, at most
max_depth: RadFM's 4..64), and a 2D image, or a scan of one slice (RadFM stores 2D images
as z = 1), is repeated to T. RadFM picks T per batch, radjax per sample: the same for a
batch of one, as inference runs (src/test.py's DataLoader has collate_fn=None, so its
collator is never called: inference gets stack_images' 512 x 512 x T, as here). Training
only, as src/train.py's collator does at a batch of one (its code default for volumes):
a sample of more than 6 images keeps T <= 32 (config.data.many_images,
many_images_max_slices; radjax/data/processors.py VolumeSlots), and a batch deeper than 4
slices is resized in-plane to 256 (config.data.volume_image_size, `shrink_plane`): radjax
decides per batch from the depth the batch is padded to (its bucket; one in-plane size
per compiled shape), resizing the image_size slots by nearest voxel as F.interpolate
resizes RadFM's 512 x 512 inputs (on several processes the training step does, the same
rows and columns: radjax/models/vlm.py _volume_slots). Real slices are marked in the depth
mask; a batch pads its samples to a common depth. The slots travel to the device as
the stored voxels and 8-bit images (`sample_parts`), which the device repeats and
normalises (radjax/data/pixels.py volume_floats); with config.data.pixels='float32' the host
does (`sample_input`).
"""
import io

import numpy as np

from radjax.data import images as images_lib
from radjax.data import pixels, schema


def decode_volume(image: dict, record_id: str) -> np.ndarray:
  """A 3D entry -> [rows, cols, slices] in [0, 1], in its stored dtype (float16: a
  sample keeps a few of its slices, converted after; a float32 copy of the whole scan
  doubled a read's memory). Errors name the record."""
  if image.get('kind') != '3d' or image.get('format') != 'npy':
    raise schema.SchemaError(f'record {record_id!r}: images: expected a 3d npy volume, got '
                             f"{image.get('kind')}/{image.get('format')}")
  try:
    vol = np.load(io.BytesIO(image['data']), allow_pickle=False)
  except Exception as e:  # numpy raises several types for a damaged header
    raise schema.SchemaError(f'record {record_id!r}: images: undecodable volume ({e})') from e
  if vol.ndim != 3 or min(vol.shape) < 1:
    raise schema.SchemaError(f'record {record_id!r}: images: a volume must be [rows, cols, '
                             f'slices], got shape {vol.shape}')
  if vol.dtype.kind not in 'fiub':  # strings, complex or structured voxels
    raise schema.SchemaError(f'record {record_id!r}: images: volume voxels must be numbers, '
                             f'got dtype {vol.dtype}')
  if vol.dtype.kind != 'f':
    vol = vol.astype(np.float32)
  if not np.isfinite(vol).all():
    raise schema.SchemaError(f'record {record_id!r}: images: the volume has NaN or inf voxels')
  # Volumes are stored in [0, 1] (data_prep/volume_ops.py to_entry). Raw Hounsfield units
  # or 8-bit voxels would otherwise be clipped to [0, 1] below: a silently blank scan.
  lo, hi = float(vol.min()), float(vol.max())
  if lo < 0.0 or hi > 1.0:
    raise schema.SchemaError(
        f'record {record_id!r}: images: volume values span [{lo:g}, {hi:g}], not [0, 1]; '
        'window or rescale it to [0, 1] first (data_prep/volumes.py prepare)')
  return vol


def nearest_indices(size: int, target: int) -> np.ndarray:
  """The source index of each of `target` outputs, as torch's 3D
  `F.interpolate(mode='nearest')` (RadFM's collator) picks them: floor(k * scale) with
  scale = size / target and the product in float32 (exact integers differ: 26 -> 44 reads
  slice 12 at output 22 there, 13 by integers)."""
  scale = np.float32(size) / np.float32(target)
  picked = np.floor(np.arange(target, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(picked, size - 1)


def target_depth(depth: int, depth_patch: int, max_depth: int) -> int:
  """The depth RadFM's collators resize a scan of `depth` slices to: the nearest multiple
  of depth_patch (a tie goes to the smaller), from one patch to max_depth."""
  top = max(depth_patch, max_depth // depth_patch * depth_patch)
  return min(max((2 * depth + depth_patch - 1) // (2 * depth_patch), 1) * depth_patch, top)


def resize_volume(vol: np.ndarray, size: int, depth: int) -> np.ndarray:
  """[rows, cols, slices] -> [size, size, depth], each voxel the nearest one."""
  rows, cols, slices = vol.shape
  return vol[np.ix_(nearest_indices(rows, size), nearest_indices(cols, size),
                    nearest_indices(slices, depth))]


def sample_parts(entries: list[dict], *, size: int, max_depth: int, depth_patch: int,
                 num_channels: int, mean, std, record_id: str,
                 gray: bool = False) -> tuple[list, int]:
  """One sample's image entries (3D, or 2D) -> (per entry: a 2D image's (8-bit planes
  [size, size, 1 or 3], pixel table [256, C]) as images.preprocess_pixels gives them, or
  a scan resized to [size, size, depth] in its stored dtype; depth): the depth its
  deepest scan is resized to (a 2D image counts as one slice). `gray`: a colour 2D image
  is an error (config.data.pixels='gray8')."""
  flat = [e.get('kind', '2d') == '2d' for e in entries]
  decoded = [images_lib.preprocess_pixels(e, size=size, num_channels=num_channels, mean=mean,
                                          std=std, record_id=record_id, gray=gray)
             if is_2d else decode_volume(e, record_id) for e, is_2d in zip(entries, flat)]
  deepest = max([x.shape[2] for x, is_2d in zip(decoded, flat) if not is_2d] or [1])
  depth = target_depth(deepest, depth_patch, max_depth)
  return [x if is_2d else resize_volume(x, size, depth)
          for x, is_2d in zip(decoded, flat)], depth


def sample_input(entries: list[dict], *, size: int, max_depth: int, depth_patch: int,
                 num_channels: int, mean, std, record_id: str) -> tuple[list[np.ndarray], int]:
  """One sample's image entries (3D, or 2D) -> ([size, size, depth, C] normalised each,
  depth): all at the depth of `sample_parts`, a 2D image repeated to it. The host's side
  of config.data.pixels='float32'; radjax/data/pixels.py volume_floats is the device's."""
  parts, depth = sample_parts(entries, size=size, max_depth=max_depth, depth_patch=depth_patch,
                              num_channels=num_channels, mean=mean, std=std,
                              record_id=record_id)
  out = []
  for x in parts:
    if isinstance(x, tuple):  # a 2D image: its planes looked up, repeated along depth
      planes, table = x
      x = images_lib.lookup_pixels(planes[..., 0] if planes.shape[-1] == 1 else planes, table,
                                   gray=planes.shape[-1] == 1)
      out.append(np.repeat(x[:, :, None, :], depth, axis=2))
    else:
      vol = x.astype(np.float32)
      out.append(images_lib.normalise(vol[..., None].repeat(num_channels, -1), mean, std,
                                      num_channels))
  return out, depth


def bucket(depth: int, buckets: tuple[int, ...], max_depth: int) -> int:
  """The smallest bucket >= depth (max_depth when none is)."""
  return min([b for b in buckets if b >= depth] or [max_depth])


def trim_depth(batch: dict, buckets: tuple[int, ...], max_depth: int) -> dict:
  """A volume batch padded to max_depth -> padded to the bucket of its deepest volume
  (its compact `volumes` [..., D], or float32 `images` [..., D, C]: radjax/data/pixels.py)."""
  real = np.nonzero(batch['depth_mask'].any(axis=(0, 1)))[0]
  depth = bucket(int(real[-1]) + 1 if real.size else 1, buckets, max_depth)
  if pixels.VOLUMES in batch:
    trimmed = {pixels.VOLUMES: batch[pixels.VOLUMES][..., :depth]}
  else:
    trimmed = {'images': batch['images'][..., :depth, :]}
  return {**batch, **trimmed, 'depth_mask': batch['depth_mask'][..., :depth]}


def shrink_plane(batch: dict, size: int, depth_patch: int) -> dict:
  """A volume batch (as trim_depth leaves it) padded deeper than one depth patch -> its
  slots resized in-plane to size x size by nearest voxel (`nearest_indices`, as RadFM's
  collator's F.interpolate reads its 512 x 512 inputs), the 2D slots' 8-bit planes too;
  a batch one depth patch deep (2D images, scans of <= depth_patch slices) as it is."""
  if batch['depth_mask'].shape[-1] <= depth_patch:
    return batch
  out = dict(batch)
  for key in ('images', pixels.VOLUMES):  # [B, M, H, W, ...] both
    if key in batch:
      x = batch[key]
      rows, cols = nearest_indices(x.shape[2], size), nearest_indices(x.shape[3], size)
      out[key] = np.ascontiguousarray(x[:, :, rows][:, :, :, cols])
  return out
