"""RadFM's image files -> float16 3D entries of the Example schema, one per scan.

RadFM's Radiopaedia files (seeds_spec §4.3) are `.npy` arrays of shape (S, 3, H, W, z):
the S scans of a case, each resized to H = W = 512, its slice repeated over 3 channels,
with no spacing kept; a 2D image is a scan of depth z = 1. Each scan becomes one (rows,
cols, slices) entry from channel 0 (the channels are copies), min-max rescaled to [0, 1]
over the whole case, as RadFM's loaders rescale the (S, 3, H, W, z) array they load
(`(image - image.min()) / (image.max() - image.min())`), so a dim scan of a case stays dim
beside a bright one; a (3, H, W, z) or (H, W, z) array is one scan. A NIfTI (the modality
CSVs) is read by data_prep/volumes.py with its spacing. `size` > 0 resizes each scan
in-plane to size x size (linear), e.g. 256 as RadFM's collator does for 3D batches of one,
so a case of 512 x 512 x 64 scans does not make a 32 MB record per scan.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from data_prep import volumes
from data_prep.builder import Reject
from data_prep.volume_ops import Volume, to_entry

ROWS_COLS_SLICES = 3


def _scan_arrays(array: np.ndarray, where: str) -> list[np.ndarray]:
  if array.ndim == 5:  # (S, C, H, W, z)
    return [array[s, 0] for s in range(array.shape[0])]
  if array.ndim == 4:  # (C, H, W, z)
    return [array[0]]
  if array.ndim == ROWS_COLS_SLICES:
    return [array]
  raise Reject(f"{where}: array of shape {array.shape}; expected RadFM's (S, 3, H, W, z), "
               '(3, H, W, z) or (H, W, z)')


def load_npy_scans(path: str) -> list[Volume]:
  """A RadFM .npy -> one Volume per scan (no spacing: RadFM kept none)."""
  array = volumes.load_numeric_npy(str(path))
  scans = _scan_arrays(array, path)
  out = []
  for s, scan in enumerate(scans):
    where = f'{path} scan {s}' if len(scans) > 1 else path
    # Depth 1 is RadFM's own 2D image (z = 1; its collator repeats the slice in depth).
    if min(scan.shape[:2]) < volumes.MIN_SIDE or scan.shape[2] < 1:
      raise Reject(f'{where}: scan of shape {scan.shape}, expected at least '
                   f'{volumes.MIN_SIDE} rows and cols and 1 slice')
    if not np.isfinite(scan).all():  # RadFM swapped such volumes for noise; we reject
      raise Reject(f'{where}: non-finite voxels (NaN or inf)')
    out.append(Volume(array=scan.astype(np.float32), spacing=None, where=where))
  return out


def _resize(volume: Volume, size: int) -> Volume:
  rows, cols, _ = volume.array.shape
  if size <= 0 or (rows, cols) == (size, size):
    return volume
  factors = (size / rows, size / cols, 1.0)
  array = ndimage.zoom(volume.array, factors, order=1, mode='nearest', grid_mode=True)
  spacing = volume.spacing
  if spacing is not None:
    spacing = (spacing[0] * cols / size, spacing[1] * rows / size, spacing[2])
  return Volume(array=array.astype(np.float32), spacing=spacing, where=volume.where,
                modality=volume.modality)


def _case_range(scans: list[Volume], path: str) -> tuple[float, float]:
  """RadFM's min-max: one (min, max) over every scan of the file (float64: no overflow)."""
  lo = min(float(v.array.min()) for v in scans)
  hi = max(float(v.array.max()) for v in scans)
  if not hi > lo:
    raise Reject(f'{path}: constant case (every voxel {lo}), nothing to normalise')
  return lo, hi


def _entry(volume: Volume, lo: float, hi: float) -> dict:
  values = (volume.array.astype(np.float64) - lo) / (hi - lo)
  return to_entry(np.clip(values, 0.0, 1.0).astype(np.float32), volume.spacing, volume.where)


def scan_entries(path: str, size: int = 0) -> list[dict]:
  """Every scan of a RadFM image file (.npy, .nii, .nii.gz) -> schema image entries."""
  name = os.path.basename(path).lower()
  if name.endswith('.npy'):
    scans = load_npy_scans(path)
  elif name.endswith(volumes.NIFTI_SUFFIXES):
    scans = [volumes.load_volume(path)]
  else:
    raise Reject(f"{path}: unknown image format; expected RadFM's .npy or a NIfTI "
                 '(.nii, .nii.gz)')
  # No window: the units are unknown. The range is taken before the (linear) resize, as
  # RadFM normalises before its collator resizes; linear interpolation stays inside it.
  lo, hi = _case_range(scans, path)
  return [_entry(_resize(v, size), lo, hi) for v in scans]
