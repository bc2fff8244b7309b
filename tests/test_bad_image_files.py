"""Corrupt image files, made from a real image (pydicom's CT_small.dcm), at every place a
file enters: the dataset builders' check, a user's file (generate, the web demo)."""
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from data_prep import checks
from radjax.data import image_files, images, jpeg_ends, png_rows, schema


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


def chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def short_png(data: bytes, keep: float) -> bytes:
  """The PNG `data` (not interlaced) with its image data cut to `keep` of its rows, the
  stream then closed properly and every chunk's CRC right: only the row count tells (a
  stream ending inside a row PIL reports as truncated)."""
  height = struct.unpack('>I', data[20:24])[0]
  at, idat, out = 8, b'', [data[:8]]
  while at < len(data):
    length, kind = struct.unpack('>I4s', data[at:at + 8])
    body = data[at + 8:at + 8 + length]
    if kind == b'IDAT':
      idat += body
    elif kind == b'IEND':
      rows = zlib.decompress(idat)
      row = len(rows) // height
      out += [chunk(b'IDAT', zlib.compress(rows[:int(height * keep) * row])),
              chunk(b'IEND', b'')]
    else:
      out.append(data[at:at + 12 + length])
    at += 12 + length
  return b''.join(out)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'I;16'])
def test_a_png_whose_data_stops_short_of_its_rows_is_rejected_naming_the_file(film, mode):
  """Closed at a row's end, the stream decodes in PIL without an error, the missing rows
  black."""
  img = film.convert(mode) if mode != 'I;16' else Image.fromarray(
      np.asarray(film).astype(np.uint16) * 257)
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  data = buf.getvalue()
  assert checks.check_image_bytes(data, 'a.png')[0] == 'png'
  assert image_files.image_entry(data, 'a.png')['format'] == 'png'
  for keep in (0.5, 0.99):
    short = short_png(data, keep)
    with Image.open(io.BytesIO(short)) as im:
      im.load()  # what made it silent
    with pytest.raises(checks.Reject, match=r'^p1/a\.png: the PNG image data ends before'):
      checks.check_image_bytes(short, 'p1/a.png')
    with pytest.raises(image_files.ImageFileError, match=r'^a\.png: the PNG image data ends'):
      image_files.image_entry(short, 'a.png')


@pytest.mark.parametrize('interlace', [0, 1])
def test_whole_pngs_of_every_colour_type_and_depth_pass(interlace):
  """The declared size for each colour type, bit depth and Adam7 interlacing (PIL writes
  no interlaced PNG: the file is made by hand, of as many bytes as the header declares)."""
  sig = b'\x89PNG\r\n\x1a\n'
  for colour, depths in {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16),
                         6: (8, 16)}.items():
    for depth in depths:
      for w, h in ((37, 23), (9, 8), (100, 9)):
        n = png_rows.expected_bytes(w, h, depth, colour, interlace)
        head = chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, depth, colour, 0, 0, interlace))
        head += chunk(b'PLTE', bytes(range(256)) * 3) if colour == 3 else b''
        whole, short = (sig + head + chunk(b'IDAT', zlib.compress(bytes(size)))
                        + chunk(b'IEND', b'') for size in (n, n - 1))
        with Image.open(io.BytesIO(whole)) as im:
          im.load()  # PIL agrees on the size
        assert not png_rows.short_of_rows(whole), (colour, depth, w, h)
        assert png_rows.short_of_rows(short), (colour, depth, w, h)


@pytest.mark.parametrize('fmt', ['PNG', 'JPEG'])
def test_a_file_cut_anywhere_is_one_error_naming_it(film, fmt):
  """Cut inside its header, its first chunk or its data (no end marker given back): a
  Reject or ImageFileError naming the file, never another exception type."""
  buf = io.BytesIO()
  film.save(buf, format=fmt)
  data = buf.getvalue()
  for keep in (10, 16, 20, 28, 40, 100, len(data) // 2):
    with pytest.raises(checks.Reject, match=r'^p1/a\.img: '):
      checks.check_image_bytes(data[:keep], 'p1/a.img')
    try:
      entry = image_files.image_entry(data[:keep], 'a.img')
    except image_files.ImageFileError as e:
      assert str(e).startswith('a.img: ')
    else:  # passed on to decoding, which names the record
      with pytest.raises(schema.SchemaError, match=r"'a\.img'"):
        images.decode_image(entry, 1, 'a.img')
