"""Whether a JPEG's image data stops before the image ends.

A JPEG cut off in transfer and then given an end-of-image marker (FF D9) decodes without
an error: libjpeg warns 'premature end of data segment' (PIL drops the warning) and
fills every block after the cut with zeros, so the lower part of the film is flat grey.
To find it, the file is decoded again with filler bytes put before that last marker:
after a complete image's data they are stray bytes libjpeg skips (the pixels are the
same), but a cut-off image decodes them as image data (the pixels change, or the decode
fails). In a file with restart markers the filler is given again after the next
restart marker, so a cut just before a restart marker decodes it too.
"""
import io
import re

import numpy as np
from PIL import Image, ImageChops

EOI, SOS = b'\xff\xd9', b'\xff\xda'
CUT_OFF = ('the JPEG data stops before the image ends (a cut-off file given an end marker: '
           'its lower part decodes as flat grey); get the file again')
RESTARTS = tuple(bytes([0xFF, 0xD0 + n]) for n in range(8))
RESTART = re.compile(rb'\xff[\xd0-\xd7]')
# Bytes that hold no 0xFF (no marker) and decode as varied codes whatever the tables are;
# the first, 0, makes a 0xFF the cut left at the end a data byte rather than a marker.
FILLER = b'\x00' + bytes(np.random.default_rng(0).integers(0, 255, 63, dtype=np.uint8))


def _filled(data: bytes) -> bytes | None:
  """`data` with FILLER before its last end-of-image marker (None: it has none)."""
  end = data.rfind(EOI)
  if end < 0:
    return None
  # In the last scan's data a marker is real (a data byte 0xFF is written 0xFF 0x00).
  restarts = len(RESTART.findall(data, data.rfind(SOS, 0, end) + 2, end))
  filler = FILLER + (RESTARTS[restarts % 8] + FILLER if restarts else b'')
  return data[:end] + filler + data[end:]


def cut_off(data: bytes, decoded: Image.Image) -> bool:
  """Whether the JPEG `data`, which PIL decoded to `decoded` (full size, no draft), ended
  before its image did."""
  filled = _filled(data)
  if filled is None:  # no end marker: PIL itself reports such a file as truncated
    return False
  try:
    with Image.open(io.BytesIO(filled)) as im:
      im.load()
      if im.size != decoded.size or im.mode != decoded.mode:
        return True
      return ImageChops.difference(im, decoded).getbbox() is not None
  except Exception:  # the filler broke the decode: it was read as image data
    return True
