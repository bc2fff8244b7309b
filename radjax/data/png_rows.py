"""Whether a PNG's image data holds fewer rows than its header declares.

A PNG whose compressed stream ends properly but early (a writer that stopped, or a
cut-off file 'repaired' by closing the stream) decodes without an error in PIL: the
missing rows are left black. Inflating the IDAT chunks and counting the bytes against the
IHDR's size finds it.
"""
import struct
import zlib

from radjax.data import images

SHORT = ('the PNG image data ends before its last row (its header declares more): the '
         'missing rows decode as black; get the file again')
SIGNATURE = b'\x89PNG\r\n\x1a\n'
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
# Adam7 passes: (x0, y0, dx, dy).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))


def _row_bytes(width: int, bits_per_pixel: int) -> int:
  return 1 + (width * bits_per_pixel + 7) // 8  # a filter-type byte, then the samples


def expected_bytes(width: int, height: int, depth: int, colour: int, interlace: int) -> int:
  """The inflated size of the image data the header declares."""
  bits = CHANNELS[colour] * depth
  if not interlace:
    return height * _row_bytes(width, bits)
  total = 0
  for x0, y0, dx, dy in ADAM7:
    w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
    total += h * _row_bytes(w, bits) if w and h else 0
  return total


def short_of_rows(data: bytes) -> bool:
  """Whether the PNG `data`'s image data stream closes having inflated to less than its
  header (IHDR, the first chunk) declares. Chunks are walked, not checked: the decoder
  checks them. Inflating stops at the declared size, and an image over
  images.MAX_PIXELS (which the decoder refuses) is not inflated."""
  at = len(SIGNATURE)
  if not data.startswith(SIGNATURE) or data[at + 4:at + 8] != b'IHDR' or len(data) < at + 21:
    return False  # not a PNG, or cut inside its header: the decoder names it
  width, height, depth, colour, _, _, interlace = struct.unpack('>IIBBBBB',
                                                                data[at + 8:at + 21])
  if colour not in CHANNELS or width * height > images.MAX_PIXELS:
    return False
  expected, got = expected_bytes(width, height, depth, colour, interlace), 0
  inflater = zlib.decompressobj()
  while at + 8 <= len(data) and got < expected:
    length, kind = struct.unpack('>I4s', data[at:at + 8])
    if kind == b'IEND':
      break
    if kind == b'IDAT':
      pending = data[at + 8:at + 8 + length]
      while pending and not inflater.eof and got < expected:  # 1 MB pieces: counted
        got += len(inflater.decompress(pending, 1 << 20))
        pending = inflater.unconsumed_tail
    at += 12 + length
  if got < expected:
    got += len(inflater.flush())  # what the last piece left inside zlib
  # A stream cut without being closed PIL reports itself ('image file is truncated').
  return inflater.eof and got < expected
