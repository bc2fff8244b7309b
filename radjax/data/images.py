"""Image decoding and transforms: bytes -> normalised float array of the model's size."""
import io

import numpy as np
from PIL import Image

from radjax.data import schema


def decode_image(image: dict, num_channels: int, record_id: str) -> Image.Image:
  """PNG/JPEG bytes -> PIL image in 'L' or 'RGB'. Errors name the record."""
  if image.get('kind', '2d') != '2d' or image.get('format') not in ('png', 'jpeg'):
    raise schema.SchemaError(f'record {record_id!r}: images: a 2D pipeline got '
                             f"{image.get('kind')}/{image.get('format')}")
  try:
    img = Image.open(io.BytesIO(image['data']))
    img.load()
  except Exception as e:  # PIL raises many types for corrupt data
    raise schema.SchemaError(f'record {record_id!r}: images: undecodable ({e})') from e
  return img.convert('RGB' if num_channels == 3 else 'L')


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
  """[0, 1] pixels (H, W[, C]) -> (x - mean) / std with a channel axis."""
  x = x[..., None] if x.ndim == 2 else x
  mean = np.asarray(mean[:num_channels], np.float32)
  std = np.asarray(std[:num_channels], np.float32)
  return (x - mean) / std


def preprocess(image: dict, *, size: int, num_channels: int, mean, std, record_id: str,
               rng: np.random.Generator | None = None,
               crop_scale=(0.8, 1.0)) -> np.ndarray:
  """Decoded, resized (random crop + intensity jitter when `rng` is given), normalised."""
  img = decode_image(image, num_channels, record_id)
  if rng is None:
    x = np.asarray(img.resize((size, size), Image.BICUBIC), np.float32) / 255.0
    return normalise(x, mean, std, num_channels)
  img = random_resized_crop(img, size, tuple(crop_scale), rng)
  x = np.asarray(img, np.float32) / 255.0
  # Exposure varies between scanners: small contrast/brightness jitter.
  x = np.clip((x - 0.5) * rng.uniform(0.9, 1.1) + 0.5 + rng.uniform(-0.05, 0.05), 0, 1)
  return normalise(x, mean, std, num_channels)
