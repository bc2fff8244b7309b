"""An image file as a user hands it over (`--mode=generate --images`, the web demo's
upload) -> the schema's image entry the model reads. PNG and JPEG pass as they are (so a
report is the same whichever way the file came); a single-frame DICOM becomes an 8-bit
PNG the way the datasets convert it (radjax/data/dicom.py); a `.npy` volume
([rows, cols, slices] in [0, 1], as the datasets store it) is 3D."""
import io
import zlib

from PIL import Image

from radjax.data import dicom, images, jpeg_ends, png_rows, schema

PNG_MAGIC, JPEG_MAGIC, NPY_MAGIC = b'\x89PNG', b'\xff\xd8\xff', b'\x93NUMPY'
ACCEPTED = 'a PNG, JPEG or DICOM image (or a .npy volume for a 3D model)'


class ImageFileError(ValueError):
  """A file that is no model input; the message names the file."""


def _is_dicom(data: bytes, name: str) -> bool:
  return data[128:132] == b'DICM' or name.lower().endswith(('.dcm', '.dicom'))


def _dicom_entry(data: bytes, name: str) -> dict:
  try:
    ds = dicom.read_dataset(data, name)
    frames = dicom.frame_count(ds, name)
    if frames > 1:
      return {'kind': '3d', 'format': 'dicom', 'frames': frames}
    pixels = dicom.to_uint8(ds, name)
  except schema.SchemaError as e:
    raise ImageFileError(str(e)) from e
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='PNG')
  return {'data': buf.getvalue(), 'format': 'png', 'kind': '2d',
          'spacing': dicom.pixel_spacing(ds)}


def _check_jpeg_ends(data: bytes, name: str) -> None:
  """A cut-off JPEG that still decodes (it ends with an end marker) is refused; one that
  does not decode is left to the decoder's error."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.size[0] * im.size[1] > images.MAX_PIXELS:
        return  # decode_image refuses it without decoding it
      im.load()
      cut = jpeg_ends.cut_off(data, im)
  except Exception:  # undecodable: decode_image names the file and says why
    return
  if cut:
    raise ImageFileError(f'{name}: {jpeg_ends.CUT_OFF}')


def _check_png_rows(data: bytes, name: str) -> None:
  """A PNG whose data stops short of its rows, yet decodes, is refused (as above)."""
  try:
    short = png_rows.short_of_rows(data)
  except zlib.error:  # undecodable: decode_image names the file and says why
    return
  if short:
    raise ImageFileError(f'{name}: {png_rows.SHORT}')


def image_entry(data: bytes, name: str) -> dict:
  """Schema image entry {'data', 'format', 'kind'} of a file's bytes (a multi-frame
  DICOM gives a data-less '3d' entry: only its kind matters, to refuse it)."""
  if not data:
    raise ImageFileError(f'{name}: empty file; give {ACCEPTED}')
  if data.startswith(PNG_MAGIC):
    _check_png_rows(data, name)
    return {'data': data, 'format': 'png', 'kind': '2d'}
  if data.startswith(JPEG_MAGIC):
    _check_jpeg_ends(data, name)
    return {'data': data, 'format': 'jpeg', 'kind': '2d'}
  if data.startswith(NPY_MAGIC):
    return {'data': data, 'format': 'npy', 'kind': '3d'}
  if _is_dicom(data, name):
    return _dicom_entry(data, name)
  if name.lower().endswith(('.nii', '.nii.gz')):
    raise ImageFileError(f'{name}: a NIfTI volume; convert it to .npy first for a 3D '
                         'model: python -m data_prep volume <it> scan.npy')
  raise ImageFileError(f'{name}: not an image; give {ACCEPTED}')


def read_entry(path: str, name: str = '') -> dict:
  """The image entry of the file at `path` (named `name` in errors; default the path)."""
  name = name or path
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise ImageFileError(f'{name}: no such file') from None
  except IsADirectoryError:
    raise ImageFileError(f'{name}: a directory, not an image file') from None
  except OSError as e:  # a symlink loop, no permission
    raise ImageFileError(f'{name}: cannot be read ({e.strerror or e})') from None
  return image_entry(data, name)


def check_kind(entry: dict, name: str, reads_3d: bool) -> None:
  """A 3D file on a 2D model is refused here, with words rather than a decoder error."""
  if entry['kind'] == '3d' and not reads_3d:
    what = (f"a multi-frame DICOM ({entry['frames']} frames)" if entry['format'] == 'dicom'
            else 'a 3D volume')
    raise ImageFileError(f"{name}: {what}, but this workdir's vision tower reads 2D "
                         'images; give one radiograph (PNG, JPEG or single-frame DICOM)')
  if entry['format'] == 'dicom':
    raise ImageFileError(f'{name}: multi-frame DICOM is not read directly; convert the '
                         'scan to a NIfTI (e.g. dcm2niix) or export it as single-frame slices, '
                         'then to a .npy volume: python -m data_prep volume <it> scan.npy')
