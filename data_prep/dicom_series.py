"""A folder of single-frame DICOM slices -> one Volume (CT numbers in HU).

Slices are ordered by their ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient directions), so file names and InstanceNumber
do not matter and oblique or coronal stacks sort as well as axial ones; the volume is then
laid out as an axial series is displayed (volume_ops.display_layout), as a NIfTI of it is.
A series without any positions falls back to InstanceNumber, with a warning, keeps its
stored layout and takes its slice spacing from SpacingBetweenSlices or SliceThickness; one
with positions on some slices only is refused (InstanceNumber may count either way).

Every slice must agree with the first on size, pixel spacing, orientation and series;
positions must step evenly (a repeated position is a duplicate, a step off the series'
median by more than `tolerance` is a missing slice or a mixed series). Each error is a
Reject naming the folder and the offending file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from absl import logging

from data_prep.builder import Reject
from data_prep.dicom import frame_count, modality_values, read_dataset
from data_prep.volume_ops import Volume, check_voxels, display_layout

MIN_SLICES = 2
DUPLICATE_MM = 1e-3  # positions closer than this are the same slice


def _floats(ds: pydicom.Dataset, key: str, n: int) -> np.ndarray | None:
  """The tag's n finite numbers, or None (missing, another count, NaN/inf)."""
  value = ds.get(key)
  if value is None or len(value) != n:
    return None
  out = np.array([float(v) for v in value], np.float64)
  return out if np.isfinite(out).all() else None


def _read_slices(folder: Path) -> list[tuple[str, pydicom.Dataset]]:
  files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith('.'))
  if not files:
    raise Reject(f'{folder}: no files, expected the slices of one DICOM series')
  slices = []
  for path in files:
    where = f'{folder}: slice {path.name}'
    ds = read_dataset(path.read_bytes(), where)
    if frame_count(ds, where) != 1:
      raise Reject(f'{where}: a multi-frame DICOM ({ds.NumberOfFrames} frames); only '
                   'series of single-frame slices are read')
    missing = [key for key in ('Rows', 'Columns') if not ds.get(key)]
    if missing:  # the stack is sized from them before any slice is decoded
      raise Reject(f'{where}: no {" or ".join(missing)} (the image size)')
    slices.append((path.name, ds))
  if len(slices) < MIN_SLICES:
    raise Reject(f'{folder}: {len(slices)} slice, not a volume (a single image is 2D)')
  return slices


def _check_consistent(folder: Path, slices: list[tuple[str, pydicom.Dataset]]) -> None:
  name0, ds0 = slices[0]
  for name, ds in slices[1:]:
    where = f'{folder}: slice {name}'
    for key in ('SeriesInstanceUID', 'Rows', 'Columns'):
      if ds.get(key) != ds0.get(key):
        raise Reject(f'{where}: {key} {ds.get(key)} differs from {ds0.get(key)} in {name0}')
    for key, n in (('PixelSpacing', 2), ('ImageOrientationPatient', 6)):
      a, b = _floats(ds, key, n), _floats(ds0, key, n)
      if (a is None) != (b is None) or (a is not None and not np.allclose(a, b, atol=1e-4)):
        raise Reject(f'{where}: {key} {ds.get(key)} differs from {ds0.get(key)} in {name0}')


def _order_by_position(folder: Path, slices, tolerance: float) -> tuple[list[int], float]:
  """Indices of the slices along the normal and the slice spacing, checked even."""
  iop = _floats(slices[0][1], 'ImageOrientationPatient', 6)
  normal = np.cross(iop[:3], iop[3:])
  if np.linalg.norm(normal) < 0.5:  # unit row and column directions give a unit normal
    raise Reject(f'{folder}: slice {slices[0][0]}: ImageOrientationPatient {list(iop)} does '
                 'not give two orthogonal unit directions')
  pos = np.array([_floats(ds, 'ImagePositionPatient', 3) @ normal for _, ds in slices])
  order = [int(i) for i in np.argsort(pos, kind='stable')]
  z = pos[order]
  steps = np.diff(z)
  names = [slices[i][0] for i in order]
  for k, step in enumerate(steps):
    if step < DUPLICATE_MM:
      raise Reject(f'{folder}: slices {names[k]} and {names[k + 1]} share position '
                   f'{z[k]:.3f} mm along the normal (duplicate slice?)')
  typical = float(np.median(steps))
  for k, step in enumerate(steps):
    if abs(step - typical) > tolerance * typical:
      raise Reject(f'{folder}: uneven slice spacing: {names[k]} -> {names[k + 1]} is '
                   f'{step:.3f} mm, the series steps {typical:.3f} mm (missing slice?)')
  return order, float((z[-1] - z[0]) / (len(z) - 1))


def _order_by_instance(folder: Path, slices) -> tuple[list[int], float]:
  logging.warning('%s: slices lack a usable ImagePositionPatient/ImageOrientationPatient; '
                  'ordered by InstanceNumber', folder)
  numbers = []
  for name, ds in slices:
    if ds.get('InstanceNumber') is None:
      raise Reject(f'{folder}: slice {name}: neither ImagePositionPatient nor InstanceNumber, '
                   'cannot order the series')
    numbers.append(int(ds.InstanceNumber))
  if len(set(numbers)) != len(numbers):
    raise Reject(f'{folder}: repeated InstanceNumber in {sorted(numbers)}, cannot order the series')
  ds0 = slices[0][1]
  # SpacingBetweenSlices may be signed (some vendors give the direction with it).
  steps = [abs(float(v)) for v in (ds0.get('SpacingBetweenSlices'), ds0.get('SliceThickness'))
           if v not in (None, '') and np.isfinite(float(v)) and float(v) != 0]
  if not steps:
    raise Reject(f'{folder}: no slice positions, and no nonzero SpacingBetweenSlices or '
                 'SliceThickness: slice spacing unknown')
  return [int(i) for i in np.argsort(numbers, kind='stable')], steps[0]


def read_series(folder: str | os.PathLike, *, tolerance: float = 0.05) -> Volume:
  """Folder of one series' slices -> Volume (rows, cols, slices) with [sx, sy, sz] spacing.

  Slices are sorted along the slice normal, lowest position first. Values are the modality
  LUT output (HU for CT), per slice, since slope and intercept may differ between slices.
  """
  folder = Path(folder)
  slices = _read_slices(folder)
  _check_consistent(folder, slices)
  ds0 = slices[0][1]
  pixel_spacing = _floats(ds0, 'PixelSpacing', 2)
  if pixel_spacing is None:
    raise Reject(f'{folder}: slice {slices[0][0]}: no PixelSpacing')
  placed = [_floats(ds, 'ImagePositionPatient', 3) is not None
            and _floats(ds, 'ImageOrientationPatient', 6) is not None for _, ds in slices]
  if all(placed):
    order, sz = _order_by_position(folder, slices, tolerance)
  elif any(placed):  # InstanceNumber may count either way: ordering by it could flip
    name = slices[placed.index(False)][0]
    raise Reject(f'{folder}: slice {name}: no usable ImagePositionPatient / '
                 'ImageOrientationPatient (three and six finite numbers) where other slices '
                 'have them; cannot order the series')
  else:
    order, sz = _order_by_instance(folder, slices)
  rows, cols = int(ds0.Rows), int(ds0.Columns)  # _check_consistent: the same for all
  check_voxels((rows, cols, len(slices)), str(folder), 'a series')  # before any decode
  # One float32 stack filled slice by slice, each slice's pixels let go once copied (a
  # list of float64 planes, then their stack, held the series three times over).
  array = np.empty((rows, cols, len(order)), np.float32)
  for k, i in enumerate(order):
    name, ds = slices[i]
    array[..., k] = modality_values(ds, f'{folder}: slice {name}')
    del ds.PixelData  # its bytes and pydicom's decoded copy; the header stays
  sy, sx = pixel_spacing  # PixelSpacing is (between rows, between columns)
  spacing = (float(sx), float(sy), sz)
  if all(placed):  # in the display layout of an axial series, whatever the acquisition
    array, spacing = display_layout(array, _affine(slices[order[0]][1], sx, sy, sz))
  return Volume(array=array, spacing=spacing, where=str(folder),
                modality=str(ds0.get('Modality', '')))


def _affine(ds: pydicom.Dataset, sx: float, sy: float, sz: float) -> np.ndarray:
  """Voxel (row, column, slice) -> RAS mm of the sorted stack whose first slice is ds.
  DICOM's patient axes are LPS; ImageOrientationPatient's first triple is the direction
  along a row (columns increase), its second down a column (rows increase)."""
  iop = _floats(ds, 'ImageOrientationPatient', 6)
  along_row, down_column = iop[:3], iop[3:]
  normal = np.cross(along_row, down_column)
  affine = np.eye(4)
  affine[:3, :3] = np.stack([down_column * sy, along_row * sx, normal * sz], axis=1)
  affine[:3, 3] = _floats(ds, 'ImagePositionPatient', 3)
  return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
