"""3D image entries (kind '3d': float16 `npy` arrays [rows, cols, slices] in [0, 1], as
data_prep/volume_ops.py `to_entry` stores them) -> model input for a 'vit3d' tower.

A volume is resized in-plane to size x size (linear) and, when deeper than max_depth,
in depth to max_depth (nearest, as RadFM shrinks deep scans); a shallower one keeps its
slices and is zero-padded, the depth mask saying which slices are real. A 2D image in a
volume batch is repeated to one depth patch, as RadFM's nearest resize from depth 1 does;
so is a volume of one slice (RadFM stores 2D images as z = 1). A volume of fewer slices
than one depth patch (2 or 3 of 4) is resized in depth to that patch with the nearest
slice, as RadFM's collator does (src/train.py DataCollator: a batch whose deepest image
has 1-3 slices gets target depth 4, and `F.interpolate` in its default 'nearest' mode
reads slice floor(k * D / 4)), not zero-padded.
"""
import io

import numpy as np
from scipy import ndimage

from radjax.data import images as images_lib
from radjax.data import schema


def decode_volume(image: dict, record_id: str) -> np.ndarray:
  """A 3D entry -> float32 [rows, cols, slices] in [0, 1]. Errors name the record."""
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


def nearest_slices(depth: int, target: int) -> np.ndarray:
  """The source slice of each of `target` output slices, as torch's
  `F.interpolate(mode='nearest')` picks them: floor(k * depth / target)."""
  return np.minimum(np.arange(target) * depth // target, depth - 1)


def resize_volume(vol: np.ndarray, size: int, max_depth: int,
                  depth_patch: int = 1) -> np.ndarray:
  """[rows, cols, slices] -> [size, size, min(slices, max_depth)]; fewer slices than
  depth_patch are resized (nearest) to depth_patch, as RadFM does."""
  rows, cols, depth = vol.shape
  if (rows, cols) != (size, size):
    vol = ndimage.zoom(vol, (size / rows, size / cols, 1.0), order=1, grid_mode=True,
                       mode='nearest')
  if depth > max_depth:
    vol = ndimage.zoom(vol, (1.0, 1.0, max_depth / depth), order=0, grid_mode=True,
                       mode='nearest')
  elif depth < depth_patch:  # 1 slice: repeated; 2 or 3 of 4: RadFM's nearest resize
    vol = vol[:, :, nearest_slices(depth, depth_patch)]
  return np.clip(vol[:size, :size, :max_depth], 0.0, 1.0)


def volume_input(image: dict, *, size: int, max_depth: int, depth_patch: int,
                 num_channels: int, mean, std, record_id: str) -> tuple[np.ndarray, int]:
  """One image entry (3D, or 2D repeated to depth_patch) -> ([size, size, depth, C]
  normalised, its real depth)."""
  if image.get('kind', '2d') == '2d':
    x = images_lib.preprocess(image, size=size, num_channels=num_channels, mean=mean, std=std,
                              record_id=record_id)
    return np.repeat(x[:, :, None, :], depth_patch, axis=2), depth_patch
  # A 2D image stored as a volume (RadFM's z = 1) is repeated to one depth patch, as a
  # 2D one; 2 or 3 slices fill the patch by nearest slice, as RadFM's collator does.
  vol = resize_volume(decode_volume(image, record_id), size, max_depth, depth_patch)
  x = images_lib.normalise(vol[..., None].repeat(num_channels, -1), mean, std, num_channels)
  return x, vol.shape[2]


def bucket(depth: int, buckets: tuple[int, ...], max_depth: int) -> int:
  """The smallest bucket >= depth (max_depth when none is)."""
  return min([b for b in buckets if b >= depth] or [max_depth])


def trim_depth(batch: dict, buckets: tuple[int, ...], max_depth: int) -> dict:
  """A volume batch padded to max_depth -> padded to the bucket of its deepest volume."""
  real = np.nonzero(batch['depth_mask'].any(axis=(0, 1)))[0]
  depth = bucket(int(real[-1]) + 1 if real.size else 1, buckets, max_depth)
  return {**batch, 'images': batch['images'][..., :depth, :],
          'depth_mask': batch['depth_mask'][..., :depth]}
