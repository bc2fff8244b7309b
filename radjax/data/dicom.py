"""DICOM radiograph -> 8-bit grey pixels, the way VinDr-CXR users convert it; shared by
data_prep (dataset builds) and radjax.serve (uploads in the web demo).

Order: decode (compressed transfer syntaxes through pydicom's pixel handlers), modality
LUT (Rescale Slope / Intercept or a Modality LUT Sequence), VOI LUT (a VOI LUT Sequence,
else the first Window Center / Width), MONOCHROME1 (or a Presentation LUT Shape of INVERSE)
inverted once so that bone is bright, then the image's own min..max scaled to 0..255 (12-
to 16-bit data become 8-bit).

`read_dataset` and `modality_values` (decode + modality LUT, e.g. CT numbers in HU) are
also the first steps of every slice of a 3D series (data_prep/dicom_series.py). Errors
are schema.SchemaError naming `where` (the file or record).
"""

from __future__ import annotations

import contextlib
import io
import logging
import zlib

import numpy as np
import pydicom
from pydicom import filereader
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from radjax.data import images
from radjax.data.schema import SchemaError

MIN_SIDE = 8
GREYSCALE = ('MONOCHROME1', 'MONOCHROME2')
# A deflated dataset is inflated whole before its header can be read: bound it first (a
# 1 MB file of zeros inflates to 1 GB). Real DICOM deflates 2-10x.
INFLATED_MAX_BYTES, INFLATED_MAX_RATIO = 256 << 20, 64
# Parsed up front (a malformed one named): the pixel module's group and the position and
# spacing elements radjax reads; other elements (a vendor's broken tag) stay unread.
_READ_GROUP = 0x0028
_READ_TAGS = frozenset(pydicom.datadict.tag_for_keyword(k) for k in (
    'ImagePositionPatient', 'ImageOrientationPatient', 'InstanceNumber', 'SliceThickness',
    'SpacingBetweenSlices', 'ImagerPixelSpacing', 'SeriesInstanceUID', 'Modality',
    'PresentationLUTShape'))


def read_dataset(data: bytes, where: str) -> pydicom.Dataset:
  """DICOM bytes -> dataset with pixel data."""
  if not data:
    raise SchemaError(f'{where}: empty file')
  _check_inflated_size(data, where)
  try:
    ds = pydicom.dcmread(io.BytesIO(data))
    for tag in [t for t in ds.keys() if t.group == _READ_GROUP or t in _READ_TAGS]:
      ds[tag]  # pylint: disable=pointless-statement
  except Exception as e:  # pydicom raises many types for foreign bytes
    raise SchemaError(f'{where}: not a readable DICOM: {" ".join(str(e).split())}') from e
  if 'PixelData' not in ds:
    raise SchemaError(f'{where}: DICOM has no pixel data')
  if not ds.PixelData:
    raise SchemaError(f'{where}: DICOM pixel data is empty')
  return ds


def _check_inflated_size(data: bytes, where: str) -> None:
  """Refuses a Deflated Explicit VR file that inflates past the bound, counting in 1 MB
  pieces rather than holding them."""
  fp = io.BytesIO(data)
  try:
    filereader.read_preamble(fp, False)
    meta = filereader._read_file_meta_info(fp)  # pylint: disable=protected-access
  except Exception:  # no file meta: dcmread names what is wrong
    return
  if meta.get('TransferSyntaxUID') != pydicom.uid.DeflatedExplicitVRLittleEndian:
    return
  limit = max(INFLATED_MAX_BYTES, INFLATED_MAX_RATIO * len(data))
  inflater, pending, total = zlib.decompressobj(-zlib.MAX_WBITS), data[fp.tell():], 0
  try:
    while not inflater.eof:
      piece = inflater.decompress(pending, 1 << 20)
      total, pending = total + len(piece), inflater.unconsumed_tail
      if total > limit:
        raise SchemaError(f'{where}: a deflated DICOM inflating past {limit:,} bytes from '
                          f'{len(data):,} (a decompression bomb?)')
      if not piece and not pending:
        break
  except zlib.error as e:
    raise SchemaError(f'{where}: not a readable DICOM: its deflated data: {e}') from e


@contextlib.contextmanager
def _quiet_decoders():
  """pydicom's pixel decoders log each plugin's failure with its traceback (ERROR)."""
  logger = logging.getLogger('pydicom')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def frame_count(ds: pydicom.Dataset, where: str = 'DICOM') -> int:
  try:
    return int(ds.get('NumberOfFrames', 1) or 1)
  except (TypeError, ValueError) as e:
    raise SchemaError(f'{where}: NumberOfFrames {ds.get("NumberOfFrames")!r} is not a '
                      'number') from e


@contextlib.contextmanager
def _header_values(where: str, what: str):
  """Names the file and the header values pydicom's LUT code fails on (a zero window
  width, a non-numeric rescale slope)."""
  try:
    yield
  except (TypeError, ValueError, ArithmeticError) as e:
    raise SchemaError(f'{where}: its {what} do not apply: {" ".join(str(e).split())}') from e


def modality_values(ds: pydicom.Dataset, where: str) -> np.ndarray:
  """One greyscale frame after the modality LUT (float64; Hounsfield units for CT)."""
  photometric = str(ds.get('PhotometricInterpretation', ''))
  if photometric not in GREYSCALE:
    raise SchemaError(f'{where}: PhotometricInterpretation {photometric or "missing"}, '
                      'expected MONOCHROME1 or MONOCHROME2')
  if frame_count(ds, where) != 1:
    raise SchemaError(f'{where}: {ds.NumberOfFrames} frames, expected a single frame')
  # A deflated or RLE file of a few MB can claim 65535 x 65535 pixels.
  images.check_pixel_count(int(ds.get('Columns', 0) or 0), int(ds.get('Rows', 0) or 0), where)
  try:
    with _quiet_decoders():  # the error below says what they log, in one line
      pixels = ds.pixel_array
  except Exception as e:  # missing or broken decoders raise many types
    # pydicom lists each plugin's failure on a line of its own.
    raise SchemaError(f'{where}: pixel data does not decode: {" ".join(str(e).split())}'
                      ) from e
  if pixels.ndim == 3:  # pydicom returns the frames the data holds beyond the header's
    raise SchemaError(f'{where}: pixel data holds {pixels.shape[0]} frames of '
                      f'{pixels.shape[1]} x {pixels.shape[2]}, but NumberOfFrames is '
                      f'{frame_count(ds, where)} (a damaged header?)')
  if pixels.ndim != 2 or min(pixels.shape) < MIN_SIDE:
    raise SchemaError(f'{where}: degenerate pixel array of shape {pixels.shape}')
  with _header_values(where, 'Rescale Slope / Intercept (or Modality LUT)'):
    values = np.asarray(apply_modality_lut(pixels, ds), np.float64)
  # An inf or NaN slope / intercept (or float pixels) was reported downstream as a 'blank
  # image' or as a series' non-finite voxels, the slice unnamed.
  if not np.isfinite(values).all():
    raise SchemaError(f'{where}: non-finite values (NaN or inf) after the modality LUT '
                      f"(Rescale Slope {ds.get('RescaleSlope')}, Intercept "
                      f"{ds.get('RescaleIntercept')})")
  return values


def to_uint8(ds: pydicom.Dataset, where: str) -> np.ndarray:
  """The frame as 8-bit grey [rows, columns], bone bright."""
  values = modality_values(ds, where)
  if ds.get('VOILUTSequence'):
    with _header_values(where, 'VOI LUT Sequence'):
      values = _voi_lut_table(values, ds)
  elif 'WindowCenter' in ds:
    with _header_values(where, 'Window Center / Width'):
      values = apply_voi_lut(values, ds, index=0)
  values = values.astype(np.float64)
  if _shown_inverted(ds, where):
    values = values.max() - values
  lo, hi = values.min(), values.max()
  if not np.isfinite([lo, hi]).all() or hi <= lo:
    raise SchemaError(f'{where}: blank image (all pixels {lo})')
  return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _shown_inverted(ds: pydicom.Dataset, where: str) -> bool:
  """MONOCHROME1, or a Presentation LUT Shape of INVERSE: the lowest value is shown white.
  DX files carry both together (PS3.3 C.8.11.6), meaning one inversion; some CR and
  secondary-capture files mark a MONOCHROME2 image INVERSE alone."""
  shape = str(ds.get('PresentationLUTShape', '') or '').strip().upper()
  if shape not in ('', 'IDENTITY', 'INVERSE'):
    raise SchemaError(f'{where}: Presentation LUT Shape {shape!r}, expected IDENTITY or '
                      'INVERSE')
  return ds.PhotometricInterpretation == 'MONOCHROME1' or shape == 'INVERSE'


def _voi_lut_table(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
  """The first VOI LUT looked up with wide indices: pydicom's apply_voi_lut holds them in
  the LUT's output type, so an 8-bit LUT of 4096 entries wrapped index 256 to 0."""
  item = ds.VOILUTSequence[0]
  entries, first, _ = (int(v) for v in item.LUTDescriptor)
  data = item['LUTData'].value
  if isinstance(data, bytes):  # OW: 16-bit words in the dataset's byte order
    little = (ds.original_encoding[1] if ds.original_encoding[1] is not None else True)
    lut = np.frombuffer(data, '<u2' if little else '>u2')
  else:
    lut = np.atleast_1d(np.asarray(data, np.int64))
  lut = lut[:entries or 2**16]
  if not lut.size:
    raise ValueError('LUT Data is empty')
  index = np.clip(np.floor(values) - first, 0, lut.size - 1).astype(np.intp)
  return lut[index].astype(np.float64)


def pixel_spacing(ds: pydicom.Dataset) -> list[float] | None:
  """[x, y] in mm (DICOM gives row (y) spacing first), or None."""
  raw = ds.get('PixelSpacing') or ds.get('ImagerPixelSpacing')
  try:
    spacing = [float(raw[1]), float(raw[0])] if raw is not None and len(raw) == 2 else None
  except (TypeError, ValueError):
    return None  # unreadable: no spacing, as when the tag is absent
  if spacing is None or not all(np.isfinite(v) and v > 0 for v in spacing):
    return None
  return spacing
