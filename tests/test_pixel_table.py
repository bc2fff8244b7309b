"""images.preprocess normalises by a 256-entry table per channel: the floats must be
those of normalising the [0, 1] image elementwise, with and without the training jitter,
for grayscale and RGB images (the exported HF processor's pixels rest on them)."""
import io

import numpy as np
import pytest
from PIL import Image

from radjax.data import images

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _elementwise(img: Image.Image, num_channels: int, jitter=None) -> np.ndarray:
  x = np.asarray(img, np.float32) / 255.0
  if jitter is not None:
    x = np.clip((x - 0.5) * jitter[0] + 0.5 + jitter[1], 0, 1)
  return images.normalise(x, MEAN, STD, num_channels)


def _entry(mode: str) -> dict:
  rng = np.random.default_rng(1)
  shape = (90, 70) if mode == 'L' else (90, 70, 3)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, 'PNG')
  return {'kind': '2d', 'format': 'png', 'data': buf.getvalue()}


@pytest.mark.parametrize('mode,num_channels', [('L', 3), ('L', 1), ('RGB', 3)])
def test_table_gives_the_elementwise_floats(mode, num_channels):
  entry = _entry(mode)
  got = images.preprocess(entry, size=48, num_channels=num_channels, mean=list(MEAN),
                          std=list(STD), record_id='r')
  img = images.decode_image(entry, num_channels, 'r', keep_gray=True)
  want = _elementwise(img.resize((48, 48), Image.BICUBIC), num_channels)
  assert got.dtype == np.float32 and got.shape == (48, 48, num_channels)
  np.testing.assert_array_equal(got, want)

  # Augmented: the same crop and jitter drawn from the same rng.
  got = images.preprocess(entry, size=48, num_channels=num_channels, mean=MEAN, std=STD,
                          record_id='r', rng=np.random.default_rng(7))
  rng = np.random.default_rng(7)
  img = images.decode_image(entry, num_channels, 'r', keep_gray=True)
  crop = images.random_resized_crop(img, 48, (0.8, 1.0), rng)
  want = _elementwise(crop, num_channels, (rng.uniform(0.9, 1.1), rng.uniform(-0.05, 0.05)))
  np.testing.assert_array_equal(got, want)
  assert not np.array_equal(got, _elementwise(crop, num_channels))  # the jitter is there


def test_crop_resize_keeps_proportions_where_square_squeezes():
  """LLM-CXR's codec input: shorter side to the size, the centre square. A 64 x 128 film
  with a bright band in its left eighth loses the band; squeezed it keeps it."""
  px = np.zeros((64, 128), np.uint8)
  px[:, :16] = 255
  buf = io.BytesIO()
  Image.fromarray(px).save(buf, 'PNG')
  entry = {'kind': '2d', 'format': 'png', 'data': buf.getvalue()}
  kw = dict(size=32, num_channels=1, mean=(0.5,), std=(0.5,), record_id='r')
  square = images.preprocess(entry, **kw)
  crop = images.preprocess(entry, resize='crop', **kw)
  assert square.shape == crop.shape == (32, 32, 1)
  assert square[:, :2].mean() > 0.9 and crop.max() < -0.99
  # A square image is the same both ways up to the filter.
  Image.fromarray(px[:, :64]).save(buf := io.BytesIO(), 'PNG')
  entry = {**entry, 'data': buf.getvalue()}
  np.testing.assert_allclose(images.preprocess(entry, resize='crop', **kw),
                             images.preprocess(entry, **kw), atol=0.3)
  with pytest.raises(ValueError, match="config.data.resize: 'pad'"):
    images.preprocess(entry, resize='pad', **kw)


def test_crop_resize_is_llm_cxrs_resize_then_centre_crop_pixel_for_pixel():
  """LLM-CXR's encode_cxr_all.py: sides scaled by size / shorter side and rounded, Lanczos,
  then torchvision's center_crop (offsets round((side - size) / 2)); written out here."""
  rng = np.random.default_rng(0)
  for w, h in ((636, 764), (764, 636), (625, 512)):
    smooth = Image.fromarray(rng.uniform(0, 255, (h // 32, w // 32)).astype(np.float32))
    px = np.clip(np.asarray(smooth.resize((w, h), Image.BICUBIC)), 0, 255).astype(np.uint8)
    px[h // 3:h // 3 + 10] = 255  # an edge, where a sub-pixel shift shows most
    img = Image.fromarray(px)
    r = 64 / min(w, h)
    ref = img.resize((round(r * w), round(r * h)), Image.LANCZOS)
    top, left = int(round((ref.height - 64) / 2.0)), int(round((ref.width - 64) / 2.0))
    ref = np.asarray(ref)[top:top + 64, left:left + 64]
    np.testing.assert_array_equal(np.asarray(images.center_crop(img, 64)), ref)


@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P_transparent'])
def test_transparent_pixels_are_laid_over_white_as_hf_does(mode):
  """The exported processor's convert_rgb composites transparency onto white; radjax used
  to drop the alpha channel (up to 2/255 apart on such PNGs)."""
  from transformers.image_transforms import convert_to_rgb
  rng = np.random.default_rng(3)
  if mode == 'P_transparent':
    img = Image.fromarray(rng.integers(0, 16, (40, 30), dtype=np.uint8), 'L').convert('P')
    img.info['transparency'] = 5
  else:
    shape = (40, 30, len(mode))
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)
  buf = io.BytesIO()
  img.save(buf, 'PNG', **({'transparency': 5} if mode == 'P_transparent' else {}))
  entry = {'kind': '2d', 'format': 'png', 'data': buf.getvalue()}
  want = np.asarray(convert_to_rgb(Image.open(io.BytesIO(buf.getvalue()))))
  got = np.asarray(images.decode_image(entry, 3, 'r'))
  np.testing.assert_array_equal(got, want)
  if mode == 'LA':  # a grayscale image stays 'L', with the same values
    gray = images.decode_image(entry, 3, 'r', keep_gray=True)
    assert gray.mode == 'L'
    np.testing.assert_array_equal(np.asarray(gray), want[..., 0])


def test_jittered_table_stays_in_the_pixel_range():
  """The contrast/brightness jitter clips to [0, 1] before normalising (ColorJitter's
  clamp): white under the strongest jitter is still normalised white, black still black."""
  mean, std = (0.5,), (0.25,)
  for contrast, brightness in ((1.1, 0.05), (1.1, -0.05), (0.9, 0.05)):
    table = images.pixel_table(mean, std, 1, contrast, brightness)
    assert table.min() >= (0 - 0.5) / 0.25 and table.max() <= (1 - 0.5) / 0.25
  table = images.pixel_table(mean, std, 1, 1.1, 0.05)
  assert table[255, 0] == (1 - 0.5) / 0.25
