"""Operations on a loaded volume: resampling to a spacing, CT windowing, normalisation to
[0, 1], and the float16 `npy` image entry of the Example schema.

A `Volume` array is (rows, columns, slices): a stack of 2D images along the last axis,
as RadFM's 3D ViT reads it (depth last). Its `spacing` is [sx, sy, sz] in mm, in the
order 2D entries already use ([x, y] for an (H, W) image): sx between columns (axis 1),
sy between rows (axis 0), sz between slices (axis 2).

Resampling uses scipy.ndimage, which jax already requires, so it adds no dependency and
interpolates in one pass on the host (jax.image.resize would move volumes to a device
and back for no gain in data preparation).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from data_prep.builder import Reject

# 4 GiB of float32: a CT of 512 x 512 x 4096 slices; a header can claim 10000^3.
MAX_VOXELS = 2**30


def check_voxels(shape: Sequence[int], where: str, what: str = 'a volume') -> None:
  """Refuses a shape over MAX_VOXELS, from a header's claim, before anything is allocated."""
  if math.prod(int(n) for n in shape) > MAX_VOXELS:
    raise Reject(f'{where}: {what} of shape {tuple(int(n) for n in shape)}, over the '
                 f'{MAX_VOXELS:,} voxels a volume may have')


# Common (centre, width) presets in Hounsfield units.
WINDOWS = {
  'lung': (-600.0, 1500.0),
  'mediastinum': (40.0, 400.0),
  'bone': (400.0, 1800.0),
  'brain': (40.0, 80.0),
}


@dataclasses.dataclass
class Volume:
  array: np.ndarray  # float32 (rows, cols, slices); HU for CT
  spacing: tuple[float, float, float] | None  # [sx, sy, sz] mm, None when unknown
  where: str  # the file or folder it came from, for errors
  modality: str = ''  # DICOM Modality ('CT', 'MR', ...) when known


def display_layout(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple]:
  """A 3D array and its voxel -> RAS mm affine -> (array laid out as an axial DICOM is
  displayed: rows anterior to posterior, columns patient right to left, slices inferior to
  superior; its [sx, sy, sz] spacing). Each array axis goes to its closest RAS axis
  (nibabel's io_orientation, as as_closest_canonical does), so a NIfTI and a DICOM series
  of one scan, in any acquired orientation, give the same array."""
  import nibabel as nib  # only volume readers need it
  ornt = nib.orientations.io_orientation(affine)
  canonical = nib.orientations.apply_orientation(data, ornt)  # axes run R, A, S
  # Rounded to 1e-6 mm: a float32 affine gives 0.69999999 for 0.7.
  sizes = nib.affines.voxel_sizes(affine)[:3]
  zooms = [round(float(sizes[int(i)]), 6) for i in np.argsort(ornt[:, 0])]
  array = np.ascontiguousarray(canonical.transpose(1, 0, 2)[::-1, ::-1, :])
  return array, tuple(zooms)


def axis_spacing(spacing: Sequence[float]) -> np.ndarray:
  """[sx, sy, sz] -> spacing per array axis (rows, cols, slices) = [sy, sx, sz]."""
  sx, sy, sz = spacing
  return np.array([sy, sx, sz], np.float64)


def resample(volume: Volume, target: Sequence[float], *, order: int = 1,
             antialias: bool = False) -> Volume:
  """Volume resampled to about `target` spacing [sx, sy, sz], keeping its physical size.

  Each axis gets round(extent / target) voxels and the spacing extent / voxels, so shape
  x spacing is unchanged exactly. Voxels are treated as cells (scipy's grid_mode): an
  integer upsampling with order 0 repeats each voxel, and halving with order 1 averages
  each 2x2x2 block. `antialias` blurs axes that shrink by a Gaussian of sigma
  (factor - 1) / 2 first, as scikit-image does; off by default, as in MONAI and
  nnU-Net. order 0 is nearest (RadFM's choice), 1 linear.
  """
  if volume.spacing is None:
    raise Reject(f'{volume.where}: no spacing known, cannot resample to {list(target)} mm')
  # inf would shrink its axis to one voxel and NaN fail in numpy: both refused here.
  if len(target) != 3 or not all(math.isfinite(s) and s > 0 for s in target):
    raise ValueError(f'target spacing must be 3 finite positive numbers [sx, sy, sz], got '
                     f'{list(target)}')
  shape = np.array(volume.array.shape, np.float64)
  extent = shape * axis_spacing(volume.spacing)
  new_shape = np.maximum(1, np.round(extent / axis_spacing(target))).astype(int)
  check_voxels(new_shape, volume.where, f'resampled to {list(target)} mm, a volume')
  factors = new_shape / shape
  x = volume.array
  if antialias and (factors < 1).any():
    sigma = np.maximum(0.0, (1.0 / factors - 1.0) / 2.0)
    x = ndimage.gaussian_filter(x, sigma, mode='nearest')
  out = np.empty(tuple(new_shape), np.float32)
  ndimage.zoom(x, factors, output=out, order=order, mode='nearest', grid_mode=True)
  sy, sx, sz = (extent / new_shape).tolist()
  return dataclasses.replace(volume, array=out, spacing=(sx, sy, sz))


def window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
  """HU -> [0, 1]: centre - width/2 maps to 0, centre + width/2 to 1, clipped outside."""
  if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
    raise ValueError(f'window (centre {centre}, width {width}): both must be finite and the '
                     'width positive')
  lo = centre - width / 2.0
  return np.clip((values.astype(np.float32) - np.float32(lo)) / np.float32(width), 0.0, 1.0)


def rescale_range(volume: Volume, percentiles: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
  """Non-HU data (MR, unknown) -> [0, 1] between two percentiles, clipped. (0, 100) is
  RadFM's per-volume min-max; e.g. (0.5, 99.5) resists a few hot voxels."""
  lo, hi = np.percentile(volume.array, percentiles)
  if not hi > lo:
    raise Reject(f'{volume.where}: constant volume (every voxel {lo}), nothing to normalise')
  # float32 bounds: numpy's float64 scalars would promote the whole volume (4x its size).
  out = volume.array - np.float32(lo)
  out /= np.float32(hi - lo)
  return np.clip(out, 0.0, 1.0, out=out)


def to_entry(values: np.ndarray, spacing: Sequence[float] | None, where: str = '') -> dict:
  """[0, 1] (rows, cols, slices) values -> schema image entry: float16 `npy`, kind '3d'."""
  if values.ndim != 3:
    raise Reject(f'{where}: a 3D entry needs a (rows, cols, slices) array, got {values.shape}')
  if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
    raise Reject(f'{where}: values must be finite and in [0, 1] before storing as float16')
  buf = io.BytesIO()
  np.save(buf, values.astype(np.float16), allow_pickle=False)
  return {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d',
          'spacing': None if spacing is None else [float(s) for s in spacing]}
