"""Corrupt image files, made from a real image (pydicom's CT_small.dcm), at every place a
file enters: the dataset builders' check, a user's file (generate, the web demo)."""
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from data_prep import checks
from radjax.data import image_files, jpeg_ends


@pytest.fixture(scope='module')
def film() -> Image.Image:
  ds = pydicom.dcmread(get_testdata_file('CT_small.dcm'))
  x = ds.pixel_array.astype(np.float32)
  x = (x - x.min()) / (x.max() - x.min()) * 255
  return Image.fromarray(x.astype(np.uint8)).resize((256, 256), Image.BICUBIC)


def jpeg(img: Image.Image, **kw) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', **kw)
  return buf.getvalue()


ENCODINGS = {'baseline': {}, 'progressive': {'progressive': True},
             'optimized tables': {'optimize': True},
             'restart markers': {'restart_marker_blocks': 4},
             'restart markers per row': {'restart_marker_rows': 1}}


@pytest.mark.parametrize('mode', ['L', 'RGB'])
@pytest.mark.parametrize('encoding', ENCODINGS)
def test_a_cut_off_jpeg_given_an_end_marker_is_rejected_naming_the_file(film, encoding, mode):
  """Cut at several points and given FF D9, the JPEG decodes without an error, its lower
  part flat grey: it must be refused; the whole file must pass."""
  data = jpeg(film.convert(mode), quality=90, **ENCODINGS[encoding])
  assert checks.check_image_bytes(data, 'p10/s1/a.jpg')[0] == 'jpeg'
  assert image_files.image_entry(data, 'a.jpg')['format'] == 'jpeg'
  for frac in (0.3, 0.6, 0.9):
    cut = data[:int(len(data) * frac)] + b'\xff\xd9'
    with Image.open(io.BytesIO(cut)) as im:
      im.load()  # what made it silent: PIL decodes it
    with pytest.raises(checks.Reject, match=r'^p10/s1/a\.jpg: the JPEG data stops before'):
      checks.check_image_bytes(cut, 'p10/s1/a.jpg')
    with pytest.raises(image_files.ImageFileError, match=r'^a\.jpg: the JPEG data stops'):
      image_files.image_entry(cut, 'a.jpg')


def test_a_jpeg_cut_just_before_a_restart_marker_is_found(film):
  """A cut between two restart intervals leaves whole intervals: the filler alone would be
  skipped as stray bytes; after the next restart marker it is decoded."""
  data = jpeg(film, quality=90, restart_marker_blocks=4)
  scan = data.rindex(b'\xff\xda')
  markers = [i for i in range(scan, len(data) - 1)
             if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7]
  for at in markers[len(markers) // 2:len(markers) // 2 + 3]:
    for cut in (data[:at] + b'\xff\xd9', data[:at + 1] + b'\xff\xd9'):  # before it, in it
      with Image.open(io.BytesIO(cut)) as im:
        im.load()
        assert jpeg_ends.cut_off(cut, im)


def test_whole_jpegs_of_any_encoding_pass(film):
  """No false alarm: flat images (every block decoded to zeros), trailing bytes after the
  end marker, an embedded thumbnail's markers."""
  flat = Image.new('L', (64, 64), 128)
  cases = [jpeg(flat), jpeg(flat, progressive=True), jpeg(flat, restart_marker_blocks=2),
           jpeg(film) + b'\x00trailing bytes', jpeg(film, quality=50, subsampling=0)]
  exif = Image.Exif()
  exif[0x010E] = 'a description'
  cases.append(jpeg(film.convert('RGB'), exif=exif.tobytes()))
  for data in cases:
    with Image.open(io.BytesIO(data)) as im:
      im.load()
      assert not jpeg_ends.cut_off(data, im)
    checks.check_image_bytes(data, 'x.jpg')
