"""An uploaded file -> the schema's image entry the model reads, or an UploadError whose
message the page shows. PNG and JPEG pass as they are (so a report equals
`--mode=generate`'s on the same file); a single-frame DICOM becomes an 8-bit PNG the way
the datasets convert it (radjax/data/dicom.py); a `.npy` volume ([rows, cols, slices] in
[0, 1], as the datasets store it) is 3D."""
import io
import os

import numpy as np
from PIL import Image

from radjax.data import dicom, images, schema, volumes

PNG_MAGIC, JPEG_MAGIC, NPY_MAGIC = b'\x89PNG', b'\xff\xd8\xff', b'\x93NUMPY'
ACCEPTED = 'a PNG, JPEG or DICOM image (or a .npy volume for a 3D model)'


class UploadError(ValueError):
  """A file the demo cannot read as a model input; the message names the file."""


def _is_dicom(data: bytes, name: str) -> bool:
  return data[128:132] == b'DICM' or name.lower().endswith(('.dcm', '.dicom'))


def _dicom_entry(data: bytes, name: str) -> dict:
  try:
    ds = dicom.read_dataset(data, name)
    if dicom.frame_count(ds) > 1:
      return {'kind': '3d', 'format': 'dicom', 'frames': dicom.frame_count(ds)}
    pixels = dicom.to_uint8(ds, name)
  except schema.SchemaError as e:
    raise UploadError(str(e)) from e
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='PNG')
  return {'data': buf.getvalue(), 'format': 'png', 'kind': '2d',
          'spacing': dicom.pixel_spacing(ds)}


def image_entry(data: bytes, name: str) -> dict:
  """Schema image entry {'data', 'format', 'kind'} of an uploaded file (a multi-frame
  DICOM gives a data-less '3d' entry: only its kind matters, to refuse it)."""
  if not data:
    raise UploadError(f'{name}: empty file; upload {ACCEPTED}')
  if data.startswith(PNG_MAGIC):
    return {'data': data, 'format': 'png', 'kind': '2d'}
  if data.startswith(JPEG_MAGIC):
    return {'data': data, 'format': 'jpeg', 'kind': '2d'}
  if data.startswith(NPY_MAGIC):
    return {'data': data, 'format': 'npy', 'kind': '3d'}
  if _is_dicom(data, name):
    return _dicom_entry(data, name)
  if name.lower().endswith(('.nii', '.nii.gz')):
    raise UploadError(f'{name}: a NIfTI volume; convert it to .npy first '
                      '(data_prep/volumes.py) for a 3D model')
  raise UploadError(f'{name}: not an image; upload {ACCEPTED}')


def read_upload(path: str | None) -> tuple[dict, str]:
  """(image entry, file name) of an uploaded file path (None: nothing uploaded)."""
  if not path:
    raise UploadError(f'no file: upload {ACCEPTED}')
  name = os.path.basename(path)
  with open(path, 'rb') as f:
    return image_entry(f.read(), name), name


def check_kind(entry: dict, name: str, reads_3d: bool) -> None:
  """A 3D file on a 2D model is refused here, with words rather than a decoder error."""
  if entry['kind'] == '3d' and not reads_3d:
    what = (f"a multi-frame DICOM ({entry['frames']} frames)" if entry['format'] == 'dicom'
            else 'a 3D volume')
    raise UploadError(f"{name}: {what}, but this workdir's vision tower reads 2D images; "
                      'upload one radiograph (PNG, JPEG or single-frame DICOM)')
  if entry['format'] == 'dicom':
    raise UploadError(f'{name}: multi-frame DICOM is not read by the demo; convert the series '
                      'to a .npy volume with data_prep (python -m data_prep)')


def preview(entry: dict, name: str) -> Image.Image:
  """An RGB picture of the input to draw on (a volume: its middle slice)."""
  try:
    if entry['kind'] == '2d':
      return images.decode_image(entry, 3, name)
    vol = volumes.decode_volume(entry, name)
  except schema.SchemaError as e:
    raise UploadError(str(e)) from e
  middle = np.clip(np.asarray(vol[:, :, vol.shape[2] // 2], np.float32), 0, 1)
  return Image.fromarray(np.round(middle * 255).astype(np.uint8)).convert('RGB')
