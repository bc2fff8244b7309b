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

import math
import os

import numpy as np
from scipy import ndimage

from data_prep import volumes
from data_prep.builder import Reject
from data_prep.volume_ops import Volume, check_voxels, to_entry

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


def _npy_scans(path: str) -> list[tuple[str, np.ndarray]]:
  """A RadFM .npy -> (where, channel 0 of each scan) as views of its memory map: only the
  voxels kept are read, one scan at a time, not the file's 3 channels at its own dtype."""
  scans = _scan_arrays(volumes.map_numeric_npy(str(path)), path)
  out = []
  for s, scan in enumerate(scans):
    where = f'{path} scan {s}' if len(scans) > 1 else path
    # Depth 1 is RadFM's own 2D image (z = 1; its collator repeats the slice in depth).
    if min(scan.shape[:2]) < volumes.MIN_SIDE or scan.shape[2] < 1:
      raise Reject(f'{where}: scan of shape {scan.shape}, expected at least '
                   f'{volumes.MIN_SIDE} rows and cols and 1 slice')
    check_voxels(scan.shape, where, 'a scan')
    out.append((where, scan))
  return out


def _scan_range(where: str, scan: np.ndarray) -> tuple[float, float]:
  try:
    lo, hi = float(scan.min()), float(scan.max())  # NaN propagates through both
  except OSError as e:
    raise Reject(f'{where}: not a readable .npy: {e}') from e
  if not (math.isfinite(lo) and math.isfinite(hi)):  # RadFM swapped such volumes for noise
    raise Reject(f'{where}: non-finite voxels (NaN or inf)')
  return lo, hi


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


def _case_range(ranges: list[tuple[float, float]], path: str) -> tuple[float, float]:
  """RadFM's min-max: one (min, max) over every scan of the file."""
  lo = min(r[0] for r in ranges)
  hi = max(r[1] for r in ranges)
  if not hi > lo:
    raise Reject(f'{path}: constant case (every voxel {lo}), nothing to normalise')
  return lo, hi


def _entry(volume: Volume, lo: float, hi: float) -> dict:
  # float32 in place: the entry is float16, a float64 copy of a 512^2 x 64 scan is 128 MB.
  values = np.subtract(volume.array, lo, dtype=np.float32)
  values *= np.float32(1.0 / (hi - lo))
  return to_entry(np.clip(values, 0.0, 1.0, out=values), volume.spacing, volume.where)


def scan_entries(path: str, size: int = 0) -> list[dict]:
  """Every scan of a RadFM image file (.npy, .nii, .nii.gz) -> schema image entries."""
  name = os.path.basename(path).lower()
  # No window: the units are unknown. The range is taken before the (linear) resize, as
  # RadFM normalises before its collator resizes; linear interpolation stays inside it.
  if name.endswith('.npy'):
    mapped = _npy_scans(path)
    lo, hi = _case_range([_scan_range(where, scan) for where, scan in mapped], path)
    # One scan in float32 at a time (a case of 8 x 3 x 512 x 512 x 64 float64 was 3 GiB).
    return [_entry(_resize(Volume(array=np.asarray(scan, np.float32), spacing=None,
                                  where=where), size), lo, hi) for where, scan in mapped]
  if not name.endswith(volumes.NIFTI_SUFFIXES):
    raise Reject(f"{path}: unknown image format; expected RadFM's .npy or a NIfTI "
                 '(.nii, .nii.gz)')
  scan = volumes.load_volume(path)
  lo, hi = _case_range([(float(scan.array.min()), float(scan.array.max()))], path)
  return [_entry(_resize(scan, size), lo, hi)]
