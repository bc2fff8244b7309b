"""DICOM radiograph -> 8-bit grey PNG, the way VinDr-CXR users convert it.

Order: decode (compressed transfer syntaxes through pydicom's pixel handlers), modality
LUT (Rescale Slope / Intercept or a Modality LUT Sequence), VOI LUT (a VOI LUT Sequence,
else the first Window Center / Width), MONOCHROME1 inverted so that bone is bright,
then the image's own min..max scaled to 0..255 (12- to 16-bit data become 8-bit).

`read_dataset` and `modality_values` (decode + modality LUT, e.g. CT numbers in HU) are
also the first steps of every slice of a 3D series (data_prep/dicom_series.py).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_prep.builder import Reject

MIN_SIDE = 8
GREYSCALE = ('MONOCHROME1', 'MONOCHROME2')


def read_dataset(data: bytes, where: str) -> pydicom.Dataset:
  """DICOM bytes -> dataset with pixel data; a Reject naming `where` otherwise."""
  if not data:
    raise Reject(f'{where}: empty file')
  try:
    ds = pydicom.dcmread(io.BytesIO(data))
  except Exception as e:
    raise Reject(f'{where}: not a readable DICOM: {e}') from e
  if 'PixelData' not in ds:
    raise Reject(f'{where}: DICOM has no pixel data')
  return ds


def modality_values(ds: pydicom.Dataset, where: str) -> np.ndarray:
  """One greyscale frame after the modality LUT (float64; Hounsfield units for CT)."""
  photometric = str(ds.get('PhotometricInterpretation', ''))
  if photometric not in GREYSCALE:
    raise Reject(f'{where}: PhotometricInterpretation {photometric or "missing"}, '
                 'expected MONOCHROME1 or MONOCHROME2')
  if int(ds.get('NumberOfFrames', 1) or 1) != 1:
    raise Reject(f'{where}: {ds.NumberOfFrames} frames, expected a single frame')
  try:
    pixels = ds.pixel_array
  except Exception as e:
    raise Reject(f'{where}: pixel data does not decode: {e}') from e
  if pixels.ndim != 2 or min(pixels.shape) < MIN_SIDE:
    raise Reject(f'{where}: degenerate pixel array of shape {pixels.shape}')
  return np.asarray(apply_modality_lut(pixels, ds), np.float64)


def to_uint8(ds: pydicom.Dataset, where: str) -> np.ndarray:
  values = modality_values(ds, where)
  if 'VOILUTSequence' in ds or 'WindowCenter' in ds:
    values = apply_voi_lut(values, ds, index=0)
  values = values.astype(np.float64)
  if ds.PhotometricInterpretation == 'MONOCHROME1':
    values = values.max() - values
  lo, hi = values.min(), values.max()
  if not np.isfinite([lo, hi]).all() or hi <= lo:
    raise Reject(f'{where}: blank image (all pixels {lo})')
  return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_dicom(data: bytes, where: str) -> tuple[dict, tuple[int, int], list[float] | None]:
  """DICOM bytes -> (schema image entry as PNG, (columns, rows), pixel spacing [x, y])."""
  ds = read_dataset(data, where)
  image = to_uint8(ds, where)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=1)  # 3x faster than 6, +15% size
  spacing = None
  raw = ds.get('PixelSpacing') or ds.get('ImagerPixelSpacing')
  if raw is not None and len(raw) == 2:
    spacing = [float(raw[1]), float(raw[0])]  # DICOM gives row (y) spacing first
  entry = {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': spacing}
  return entry, (image.shape[1], image.shape[0]), spacing
