"""DICOM radiograph -> 8-bit grey PNG (the conversion itself lives in radjax/data/dicom.py,
which the web demo shares); here its errors become Rejects naming the file.

`read_dataset` and `modality_values` are also the first steps of every slice of a 3D
series (data_prep/dicom_series.py).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pydicom
from PIL import Image

from data_prep.builder import Reject
from radjax.data import dicom as dicom_lib
from radjax.data.schema import SchemaError

MIN_SIDE = dicom_lib.MIN_SIDE
GREYSCALE = dicom_lib.GREYSCALE


def _rejecting(fn):
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except SchemaError as e:
      raise Reject(str(e)) from e
  return wrapped


read_dataset = _rejecting(dicom_lib.read_dataset)
modality_values = _rejecting(dicom_lib.modality_values)
to_uint8 = _rejecting(dicom_lib.to_uint8)
frame_count = _rejecting(dicom_lib.frame_count)


def read_dicom(data: bytes, where: str) -> tuple[dict, tuple[int, int], list[float] | None]:
  """DICOM bytes -> (schema image entry as PNG, (columns, rows), pixel spacing [x, y])."""
  ds: pydicom.Dataset = read_dataset(data, where)
  image: np.ndarray = to_uint8(ds, where)
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG', compress_level=1)  # 3x faster than 6, +15% size
  spacing = dicom_lib.pixel_spacing(ds)
  entry = {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': spacing}
  return entry, (image.shape[1], image.shape[0]), spacing
