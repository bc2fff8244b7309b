"""3D scans -> float16 `npy` image entries of the Example schema (kind '3d').

    load_volume(path)        a DICOM series folder, a NIfTI file (.nii, .nii.gz) or a .npy
    prepare(volume, ...)     resample to a spacing, window (HU) or rescale to [0, 1], store
    convert_volumes(paths)   both over a list: bad inputs rejected with reasons, rest kept

Arrays are (rows, cols, slices) with spacing [sx, sy, sz] (data_prep/volume_ops.py). A
DICOM series (its slices ordered along the normal, data_prep/dicom_series.py) and a NIfTI
are both put in their closest canonical (RAS+) orientation, then laid out as an axial
DICOM is displayed: rows anterior to posterior, columns patient right to left, slices
inferior to superior (volume_ops.display_layout). So a series, in any acquired
orientation (prone, coronal, sagittal), and its NIfTI conversion give the same array. A
.npy is taken as (rows, cols, slices) already; its spacing is the caller's.

Every failure is a Reject (data_prep/builder.py) whose message starts with the file.

RadFM's own .npy files (seeds_spec §4.3: shape (S, 3, 512, 512, z), scans of a case
already resized with channels repeated and no spacing) are not read through prepare():
the RadFM builder (data_prep/radfm/scans.py) splits S, takes one channel and min-max
rescales over the whole case as RadFM's loader does, and finds the CSVs' absolute image
paths under the manual dir (data_prep/radfm/radfm_dataset_builder.py). Raw NIfTI/DICOM
sources go through prepare() with a target spacing and a CT window instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from data_prep.builder import Reject
from data_prep.dicom_series import read_series
from data_prep.volume_ops import (
  WINDOWS,
  Volume,
  check_voxels,
  display_layout,
  resample,
  rescale_range,
  to_entry,
  window,
)

MIN_SIDE = 2  # a volume has at least 2 voxels along each axis
NIFTI_SUFFIXES = ('.nii', '.nii.gz')


def _checked(volume: Volume) -> Volume:
  shape = volume.array.shape
  if volume.array.ndim != 3 or min(shape) < MIN_SIDE:
    raise Reject(f'{volume.where}: not a volume: array of shape {shape}, expected '
                 f'(rows, cols, slices) with at least {MIN_SIDE} along each')
  if not np.isfinite(volume.array).all():
    raise Reject(f'{volume.where}: non-finite voxels (NaN or inf)')
  if volume.spacing is not None and not all(np.isfinite(s) and s > 0 for s in volume.spacing):
    raise Reject(f'{volume.where}: spacing {list(volume.spacing)} is not positive')
  return volume


def read_nifti(path: str | os.PathLike) -> Volume:
  where = str(path)
  try:
    image = nib.load(where)
    check_voxels(image.shape, where, 'a NIfTI')  # the header's claim, before any allocation
    data = image.get_fdata(dtype=np.float32)  # applies scl_slope / scl_inter
  except Reject:
    raise
  except Exception as e:  # nibabel, gzip and numpy raise many types for a broken file
    why = ' '.join(str(e).split()) or type(e).__name__  # nibabel's can span lines
    raise Reject(f'{where}: not a readable NIfTI: {why}') from e
  while data.ndim > 3 and data.shape[-1] == 1:  # one time point (x, y, z, 1[, 1])
    data = data[..., 0]
  if data.ndim != 3:
    raise Reject(f'{where}: not a volume: {data.ndim}D NIfTI of shape {data.shape} '
                 '(a time series or a 2D image); expected 3D')
  # Spacing from the affine, as the orientation is: pixdim may disagree (sform set,
  # qform_code 0).
  array, zooms = display_layout(data, image.affine)
  return _checked(Volume(array=array, spacing=zooms, where=where))


def map_numeric_npy(where: str) -> np.ndarray:
  """A read-only memory map of a .npy of numbers, never unpickled; its shape is not checked
  (a caller reading part of it checks what it reads); anything else is a Reject."""
  try:
    with open(where, 'rb') as f:
      magic = f.read(6)
  except OSError as e:
    raise Reject(f'{where}: cannot be read ({e.strerror or e})') from e
  if magic != b'\x93NUMPY':
    raise Reject(f'{where}: not a .npy file (no NumPy header)')
  try:
    mapped = np.load(where, mmap_mode='r', allow_pickle=False)
  except ValueError as e:
    if 'pickle' not in str(e) and 'Python objects' not in str(e):
      raise Reject(f'{where}: not a readable .npy: {e}') from e
    raise Reject(f'{where}: not a plain numeric .npy (object arrays need pickle, refused): '
                 f'{e}') from e
  except Exception as e:  # truncated header, short data ...
    raise Reject(f'{where}: not a readable .npy: {e}') from e
  if not isinstance(mapped, np.ndarray) or mapped.dtype.kind not in 'biuf':
    raise Reject(f'{where}: .npy of dtype {getattr(mapped, "dtype", None)}, expected numbers')
  return mapped


def load_numeric_npy(where: str) -> np.ndarray:
  """A .npy of numbers read whole, after its header's shape is checked (nothing else read)."""
  mapped = map_numeric_npy(where)
  check_voxels(mapped.shape, where, 'a .npy')
  try:
    return np.array(mapped)
  except OSError as e:
    raise Reject(f'{where}: not a readable .npy: {e}') from e


def read_npy(path: str | os.PathLike, spacing: Sequence[float] | None = None) -> Volume:
  where = str(path)
  array = load_numeric_npy(where)
  if spacing is not None and len(spacing) != 3:
    raise Reject(f'{where}: spacing {list(spacing)}: expected [sx, sy, sz]')
  return _checked(Volume(array=array.astype(np.float32), where=where,
                         spacing=None if spacing is None else tuple(map(float, spacing))))


def load_volume(path: str | os.PathLike, *, spacing: Sequence[float] | None = None) -> Volume:
  """A DICOM series folder, a .nii/.nii.gz or a .npy -> Volume; `spacing` only for .npy."""
  p = Path(path)
  if not p.exists():
    raise Reject(f'{p}: no such file or folder')
  if p.is_dir():
    return _checked(read_series(p))
  name = p.name.lower()
  if name.endswith(NIFTI_SUFFIXES):
    return read_nifti(p)
  if name.endswith('.npy'):
    return read_npy(p, spacing)
  raise Reject(f'{p}: unknown volume format; expected a DICOM series folder, .nii, .nii.gz '
               'or .npy')


def prepare(volume: Volume, *, target_spacing: Sequence[float] | None = None,
            window_hu: str | tuple[float, float] | None = None,
            percentiles: tuple[float, float] = (0.0, 100.0), order: int = 1,
            antialias: bool = False) -> dict:
  """Volume -> schema image entry (float16 `npy`, kind '3d', spacing [sx, sy, sz]).

  Resamples first when `target_spacing` is given (in HU, where interpolation means
  something), then maps to [0, 1]: by a CT window (a WINDOWS name or (centre, width) in
  HU), else between two percentiles of the volume (MR, unknown units).
  """
  if target_spacing is not None:
    volume = resample(volume, target_spacing, order=order, antialias=antialias)
  if window_hu is None:
    values = rescale_range(volume, percentiles)
  else:
    if volume.modality and volume.modality != 'CT':
      raise Reject(f'{volume.where}: a {volume.modality} volume has no Hounsfield units; '
                   'use window_hu=None (percentile rescaling)')
    if 0 <= float(volume.array.min()) and float(volume.array.max()) <= 1:  # a stored .npy
      raise Reject(f'{volume.where}: values in [0, 1] (normalised already), not Hounsfield '
                   'units: a CT window maps them all to one grey; use window_hu=None')
    if isinstance(window_hu, str):
      if window_hu not in WINDOWS:
        raise ValueError(f'unknown window {window_hu!r}; known: {sorted(WINDOWS)}')
      window_hu = WINDOWS[window_hu]
    values = window(volume.array, *window_hu)
  return to_entry(values, volume.spacing, volume.where)


def convert_volumes(paths: Iterable[str | os.PathLike], **options) -> tuple[list, list[dict]]:
  """load_volume + prepare(**options) over `paths`, like a builder's items: each failure
  is a reject {'file', 'row', 'reason'} (row = position in `paths`) and the rest go on.
  Returns ([(path, entry), ...], rejects)."""
  converted, rejects = [], []
  for row, path in enumerate(paths):
    try:
      converted.append((path, prepare(load_volume(path), **options)))
    except Exception as e:  # every failure is a reject with its reason, never a crash
      reason = str(e) or type(e).__name__
      if str(path) not in reason:
        reason = f'{path}: {reason}'
      rejects.append({'file': str(path), 'row': row, 'reason': reason})
  return converted, rejects
