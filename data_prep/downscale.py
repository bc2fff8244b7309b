"""Build-time downscaling of 2D images: `python -m data_prep build ... --max_short_side N`.

A MIMIC-CXR-JPG film is about 2,544 x 3,056 pixels and every recipe reads it at 224-512.
Stored as published, each training read pays the film's decode (tens of ms of CPU) again,
every epoch; downscaled once at build so that the shorter side is N, a read costs what a
N-pixel image costs, and the shards are far smaller. Choose N at least
image_size / sqrt(min crop scale) so random crops are not upsampled (224 px and crops
from half the area: 317, so 512; 384-512 px: 768).

Per image: the format stays (JPEG re-encoded at quality 95, PNG losslessly), the bit depth
stays (a 16-bit PNG is resized in 16 bits; readers rescale it as before), the resampling
is Lanczos, the pixel spacing grows by the scale, boxes stay (they are fractions of the
image). Images already small enough and 3D volumes keep their bytes.
"""

from __future__ import annotations

import io

from PIL import Image

from radjax.data.images import MIN_IMAGE_SIDE

JPEG_QUALITY = 95  # MIMIC-CXR-JPG's own


def check_side(max_short_side, where: str) -> None:
  if max_short_side is None:
    return
  if (isinstance(max_short_side, bool) or not isinstance(max_short_side, int)
      or max_short_side < MIN_IMAGE_SIDE):
    raise ValueError(f'{where}: max_short_side {max_short_side!r}: a whole number of '
                     f'pixels, at least {MIN_IMAGE_SIDE}')


def target_size(size: tuple[int, int], max_short_side: int) -> tuple[int, int] | None:
  """(width, height) with the shorter side max_short_side, the aspect kept; None when the
  image is already no larger."""
  w, h = size
  short = min(w, h)
  if short <= max_short_side:
    return None
  scale = max_short_side / short
  return (max_short_side if w == short else max(1, round(w * scale)),
          max_short_side if h == short else max(1, round(h * scale)))


def downscale_image(image: dict, max_short_side: int, where: str) -> dict:
  """A schema image entry whose shorter side is at most max_short_side."""
  if image.get('kind') != '2d':
    return image
  img = Image.open(io.BytesIO(image['data']))
  original = img.size
  size = target_size(original, max_short_side)
  if size is None:
    return image
  fmt = image['format']
  if fmt == 'jpeg':
    img.draft(img.mode, size)  # DCT-domain reduction, never below size
  img.load()
  if img.mode in ('LA', 'RGBA'):  # accepted only when opaque (data_prep/checks.py)
    img = img.convert(img.mode[:-1])
  out = img.resize(size, Image.LANCZOS)
  buf = io.BytesIO()
  if fmt == 'jpeg':
    out.save(buf, format='JPEG', quality=JPEG_QUALITY, subsampling=0)  # full chroma
  elif fmt == 'png':
    out.save(buf, format='PNG')
  else:
    raise ValueError(f'{where}: cannot downscale a {fmt!r} image (png and jpeg only)')
  spacing = image.get('spacing')
  if spacing is not None and len(spacing) == 2:  # [x, y] mm per pixel
    sx, sy = original[0] / size[0], original[1] / size[1]
    spacing = [float(spacing[0]) * sx, float(spacing[1]) * sy]
  return {**image, 'data': buf.getvalue(), 'spacing': spacing}


def downscale_example(example: dict, max_short_side: int | None) -> dict:
  """The example with each 2D image downscaled (a no-op for None)."""
  if not max_short_side:
    return example
  rid = example.get('id', '')
  images = [downscale_image(im, max_short_side, f'record {rid!r}: images[{i}]')
            for i, im in enumerate(example.get('images') or [])]
  return {**example, 'images': images}
