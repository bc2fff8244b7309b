"""Image decoding and transforms: bytes -> 8-bit pixels of the model's size and the table
that normalises them (radjax/data/pixels.py: the device looks them up, or the host with
config.data.pixels='float32').

Every image training, evaluation and generation read goes through `decode_image`, and
`to_8bit` there is the one rule for pixel depth (the HF processor `to-hf` exports
expects the image `load_image` gives):
- 8-bit images are used as they are.
- High-bit-depth grayscale (16-bit PNG: PIL modes 'I;16*', 'I') is rescaled by its bit
  depth, v -> round(v * 255 / 65535), so an 8-bit image saved as 16-bit (v * 257) gives
  exactly the same pixels. Not by the image's own range: a dark image stays dark. An image
  that uses under 1/16 of the 16-bit range (e.g. 12-bit data in a 16-bit file) is used as
  it is, with a warning.
Transparent pixels are laid over white (flatten_alpha), as the exported processor does.
Degenerate images: one with a side under MIN_IMAGE_SIDE pixels is an error naming the
record; a constant image (every pixel the same: blank) is used, with a warning.

Augmented (training) reads of a JPEG decode at a reduced scale (PIL's draft mode: the
decoder's 1/2, 1/4 or 1/8 DCT scaling) when the random crop still gets at least the
model's size in pixels: a 2,544 x 3,056 chest film read for a 224 px crop decodes at
1/8 scale, 64x fewer pixels (4x less CPU per example: the entropy decoding stays).
Evaluation and generation decode at full scale, so their pixels equal the exported HF
processor's.
"""
import functools
import io
import warnings

import numpy as np
from absl import logging
from PIL import Image, ImageChops

from radjax.core import config_checks
from radjax.data import schema

MIN_IMAGE_SIDE = 8
# PIL's default decompression-bomb limit (Image.MAX_IMAGE_PIXELS), refused outright: PIL
# only warns below twice it, and a 330 KB 16-bit PNG of 13000 x 13000 took 4.5 GB to read.
# Radiographs are up to ~15M pixels.
MAX_PIXELS = 89_478_485
# ... and so PIL's own warning at that size, printed before radjax's one-line error, goes.
# (A filter, not catch_warnings: that is not thread-safe, and Grain decodes in threads.)
warnings.filterwarnings('ignore', category=Image.DecompressionBombWarning)
_HIGH_DEPTH_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_MAX_WARNINGS = 20
_warned = [0]


def _warn(msg: str, *args) -> None:
  """logging.warning for the first _MAX_WARNINGS image warnings of a process."""
  if _warned[0] < _MAX_WARNINGS:
    _warned[0] += 1
    logging.warning(msg, *args)


def to_8bit(img: Image.Image, record_id: str = '') -> Image.Image:
  """An 8-bit-per-sample PIL image; high-bit-depth grayscale rescaled by its bit depth."""
  if img.mode not in _HIGH_DEPTH_MODES:
    return img
  x = np.asarray(img)
  if x.size and x.max() < 4096:
    _warn('record %r: a %s image whose values all lie below 4096 (12-bit data?); it is '
          'rescaled by 16-bit depth and will look dark', record_id, img.mode)
  # v * 255 / 65535 = v / 257, rounded: (v + 128) // 257 exactly (257 is odd: no halves),
  # in integers rather than four float64 copies of a film.
  x = (np.clip(x, 0, 65535).astype(np.uint32) + 128) // 257
  return Image.fromarray(x.astype(np.uint8))  # uint8 (H, W): mode 'L'


def load_image(path: str, num_channels: int = 3) -> Image.Image:
  """An image file as radjax sees it ('L' or 'RGB', 8 bits): what to give the exported HF
  processor for a 16-bit PNG, whose own conversion would clip it to white."""
  try:
    with Image.open(path) as img:
      check_pixel_count(*img.size, path)
      img.load()
      return _checked(img, num_channels, path)
  except schema.SchemaError:  # radjax's own checks name the file already
    raise
  except (OSError, ValueError) as e:  # PIL's truncated-file error names no file
    raise schema.SchemaError(f'{path}: does not decode as an image: '
                             f'{schema.decode_error(e)}') from e


def flatten_alpha(img: Image.Image) -> Image.Image:
  """An image with transparency, over white ('L' stays grayscale): what HF's convert_rgb
  gives the exported processor, so radjax's pixels equal transformers'."""
  if img.mode not in ('RGBA', 'LA', 'PA') and 'transparency' not in img.info:
    return img
  gray = img.mode in ('LA', 'L')
  over = Image.alpha_composite(Image.new('RGBA', img.size, (255, 255, 255, 255)),
                               img.convert('RGBA'))
  return over.convert('L' if gray else 'RGB')


def check_pixel_count(width: int, height: int, where: str) -> None:
  if width * height > MAX_PIXELS:
    raise schema.SchemaError(f'{where}: {width} x {height} pixels, over the {MAX_PIXELS:,} a '
                             'radjax image may have (a decompression bomb, or not a '
                             'radiograph)')


def _checked(img: Image.Image, num_channels: int, record_id: str,
             keep_gray: bool = False) -> Image.Image:
  """8-bit 'L' or 'RGB' as num_channels asks; with keep_gray a grayscale image stays 'L'
  (its RGB form is the gray value three times: resizing it first is 3x less work)."""
  if min(img.size) < MIN_IMAGE_SIDE:
    raise schema.SchemaError(f'record {record_id!r}: images: {img.size[0]}x{img.size[1]} '
                             f'pixels; images need sides of at least {MIN_IMAGE_SIDE}')
  img = flatten_alpha(to_8bit(img, record_id))
  gray = keep_gray and img.mode == 'L'
  mode = 'L' if num_channels == 1 or gray else 'RGB'
  if img.mode != mode:  # to its own mode, convert is a copy (4 ms of a film's CPU)
    img = img.convert(mode)
  extrema = img.getextrema()
  lo, hi = np.min(extrema), np.max(extrema)
  if lo == hi:
    _warn('record %r: a constant image (every pixel %d)', record_id, int(lo))
  return img


def decode_image(image: dict, num_channels: int, record_id: str,
                 keep_gray: bool = False, min_side: int = 0) -> Image.Image:
  """PNG/JPEG bytes -> PIL image in 'L' or 'RGB', 8 bits (see the module docstring for
  high bit depths and degenerate images); with keep_gray a grayscale image stays 'L'
  whatever num_channels is. min_side > 0: a JPEG may decode at a reduced scale whose
  sides are still at least min_side pixels. Errors name the record."""
  if image.get('kind', '2d') != '2d' or image.get('format') not in ('png', 'jpeg'):
    raise schema.SchemaError(f'record {record_id!r}: images: a 2D pipeline got '
                             f"{image.get('kind')}/{image.get('format')}")
  try:
    img = Image.open(io.BytesIO(image['data']))
  except Exception as e:  # PIL raises many types for corrupt data
    raise schema.SchemaError(f'record {record_id!r}: images: undecodable ({schema.decode_error(e)})'
                             ) from e
  check_pixel_count(*img.size, f'record {record_id!r}: images')
  try:
    if min_side and img.format == 'JPEG':
      img.draft('L' if num_channels == 1 or img.mode == 'L' else None, (min_side, min_side))
    img.load()
  except Exception as e:  # PIL raises many types for corrupt data
    raise schema.SchemaError(f'record {record_id!r}: images: undecodable ({schema.decode_error(e)})'
                             ) from e
  return _checked(img, num_channels, record_id, keep_gray)


def crop_source_side(size: int, min_scale: float) -> int:
  """Image side at which random_resized_crop's smallest crop (area fraction min_scale,
  aspect 3/4 or 4/3) is still `size` pixels across."""
  return int(np.ceil(size / np.sqrt(min_scale * 3 / 4)))


def random_resized_crop(img: Image.Image, size: int, scale: tuple[float, float],
                        rng: np.random.Generator) -> Image.Image:
  """Crop of a random area fraction and aspect ratio, resized to size x size."""
  w, h = img.size
  for _ in range(10):
    area = w * h * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
      return img.resize((size, size), Image.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
  return img.resize((size, size), Image.BICUBIC)


def normalise(x: np.ndarray, mean, std, num_channels: int) -> np.ndarray:
  """[0, 1] pixels (H, W[, C]) -> (x - mean) / std with num_channels channels; a
  grayscale (H, W) image is repeated to each channel."""
  x = x[..., None] if x.ndim == 2 else x
  mean = np.asarray(mean[:num_channels], np.float32)
  std = np.asarray(std[:num_channels], np.float32)
  return (x - mean) / std


def pixel_table(mean, std, num_channels: int, contrast: float | None = None,
                brightness: float = 0.0) -> np.ndarray:
  """[256, num_channels] float32: an 8-bit value's normalised value per channel (after the
  contrast/brightness jitter when given), by the same float32 operations as on a
  [0, 1] image, so a lookup gives the same floats."""
  v = np.arange(256, dtype=np.float32) / 255.0
  if contrast is not None:
    v = np.clip((v - 0.5) * contrast + 0.5 + brightness, 0, 1)
  table = normalise(v[:, None], mean, std, num_channels)[:, 0]
  table.flags.writeable = False
  return table


@functools.lru_cache(maxsize=8)
def _plain_table(mean: tuple, std: tuple, num_channels: int) -> np.ndarray:
  return pixel_table(mean, std, num_channels)


def lookup_pixels(pixels: np.ndarray, table: np.ndarray, *, gray: bool,
                  out: np.ndarray | None = None) -> np.ndarray:
  """uint8 pixels, [...] of gray values or [..., 3] RGB, through pixel_table ->
  [..., C] float32, written into `out` when given: the host's side of
  radjax/data/pixels.py `lookup`."""
  shape = (pixels.shape if gray else pixels.shape[:-1]) + table.shape[1:]
  if out is None:
    out = np.empty(shape, np.float32)
  if gray:
    np.take(table, pixels, axis=0, out=out, mode='clip')  # uint8: in range; unbuffered
  else:
    for c in range(table.shape[1]):
      np.take(table[:, c], pixels[..., c], out=out[..., c], mode='clip')
  return out


RESIZES = config_checks.CHOICES['data.resize']


def center_crop(img: Image.Image, size: int) -> Image.Image:
  """The shorter side to `size` (Lanczos), then the centre size x size: LLM-CXR's codec
  input (encode_cxr_all.py), which keeps a non-square film's proportions. As it does: the
  whole image resized to rounded sides, then torchvision's center_crop at rounded offsets
  (resampling the crop box alone shifts and scales the longer side by a fraction of a
  pixel: up to 20 gray levels apart on a 2544 x 3056 film)."""
  w, h = img.size
  r = size / min(w, h)
  img = img.resize((round(r * w), round(r * h)), Image.LANCZOS)
  left, top = round((img.width - size) / 2), round((img.height - size) / 2)
  return img.crop((left, top, left + size, top + size))


def gray_only(img: Image.Image, record_id: str) -> Image.Image:
  """config.data.pixels='gray8': an 'L' image as it is; an RGB one whose channels are
  equal (a gray film saved as RGB) as its gray channel (what PIL's 'L' conversion gives it,
  so its pixels are unchanged); a colour one is an error naming the record."""
  if img.mode == 'L':
    return img
  r, g, b = img.split()
  if ImageChops.difference(r, g).getbbox() or ImageChops.difference(r, b).getbbox():
    raise schema.SchemaError(f"record {record_id!r}: images: a colour image, but "
                             "config.data.pixels='gray8' sends one channel; use 'uint8'")
  return r


def preprocess_pixels(image: dict, *, size: int, num_channels: int, mean, std,
                      record_id: str, rng: np.random.Generator | None = None,
                      crop_scale=(0.8, 1.0), resize: str = 'square', jitter: bool = True,
                      gray: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Decoded, resized (random crop, and with `jitter` an intensity jitter, when `rng` is
  given; else `resize`: 'square' squeezes the image to size x size, 'crop' keeps its
  proportions and crops the centre) -> (8-bit pixels [size, size, 1 (gray) or 3 (RGB)],
  their pixel_table [256, num_channels], the jitter folded in). `gray`: a colour image is
  an error (gray_only)."""
  if resize not in RESIZES:
    raise ValueError(f'config.data.resize: {resize!r} is not one of {RESIZES}')
  plain = lambda: _plain_table(tuple(map(float, mean)), tuple(map(float, std)), num_channels)
  if rng is None:
    img = decode_image(image, num_channels, record_id, keep_gray=True)
    img = gray_only(img, record_id) if gray else img
    img = (center_crop(img, size) if resize == 'crop'
           else img.resize((size, size), Image.BICUBIC))
    table = plain()
  else:
    img = decode_image(image, num_channels, record_id, keep_gray=True,
                       min_side=crop_source_side(size, crop_scale[0]))
    img = gray_only(img, record_id) if gray else img
    img = random_resized_crop(img, size, tuple(crop_scale), rng)
    if jitter:  # exposure varies between scanners: small contrast/brightness jitter
      contrast, brightness = rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)
      table = pixel_table(mean, std, num_channels, contrast, brightness)
    else:  # the crop alone (BLIP-2's train transform, XrayGPT's)
      table = plain()
  pixels = np.asarray(img)
  return pixels.reshape(size, size, -1), table


def preprocess(image: dict, **kw) -> np.ndarray:
  """preprocess_pixels, looked up: normalised float32 [size, size, num_channels]."""
  pixels, table = preprocess_pixels(image, **kw)
  return lookup_pixels(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, table,
                       gray=pixels.shape[-1] == 1)
