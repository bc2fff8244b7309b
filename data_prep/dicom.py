"""DICOM radiograph -> 8-bit grey PNG, the way VinDr-CXR users convert it.

Order: decode (compressed transfer syntaxes through pydicom's pixel handlers), modality
LUT (Rescale Slope / Intercept or a Modality LUT Sequence), VOI LUT (a VOI LUT Sequence,
else the first Window Center / Width), MONOCHROME1 inverted so that bone is bright,
then the image's own min..max scaled to 0..255 (12- to 16-bit data become 8-bit).
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_prep.builder import Reject

MIN_SIDE = 8


def to_uint8(ds: pydicom.Dataset, where: str) -> np.ndarray:
  photometric = str(ds.get('PhotometricInterpretation', ''))
  if photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise Reject(f'{where}: PhotometricInterpretation {photometric or "missing"}, '
                 'expected MONOCHROME1 or MONOCHROME2')
  if int(ds.get('NumberOfFrames', 1) or 1) != 1:
    raise Reject(f'{where}: {ds.NumberOfFrames} frames, expected one radiograph')
  try:
    pixels = ds.pixel_array
  except Exception as e:
    raise Reject(f'{where}: pixel data does not decode: {e}') from e
  if pixels.ndim != 2 or min(pixels.shape) < MIN_SIDE:
    raise Reject(f'{where}: degenerate pixel array of shape {pixels.shape}')
  values = apply_modality_lut(pixels, ds)
  if 'VOILUTSequence' in ds or 'WindowCenter' in ds:
    values = apply_voi_lut(values, ds, index=0)
  values = values.astype(np.float64)
  if photometric == 'MONOCHROME1':
    values = values.max() - values
  lo, hi = values.min(), values.max()
  if not np.isfinite([lo, hi]).all() or hi <= lo:
    raise Reject(f'{where}: blank image (all pixels {lo})')
  return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_dicom(data: bytes, where: str) -> tuple[dict, tuple[int, int], list[float] | None]:
  """DICOM bytes -> (schema image entry as PNG, (columns, rows), pixel spacing [x, y])."""
  if not data:
    raise Reject(f'{where}: empty file')
  try:
    ds = pydicom.dcmread(io.BytesIO(data))
  except Exception as e:
    raise Reject(f'{where}: not a readable DICOM: {e}') from e
  if 'PixelData' not in ds:
    raise Reject(f'{where}: DICOM has no pixel data')
  image = to_uint8(ds, where)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=1)  # 3x faster than 6, +15% size
  spacing = None
  raw = ds.get('PixelSpacing') or ds.get('ImagerPixelSpacing')
  if raw is not None and len(raw) == 2:
    spacing = [float(raw[1]), float(raw[0])]  # DICOM gives row (y) spacing first
  entry = {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': spacing}
  return entry, (image.shape[1], image.shape[0]), spacing
