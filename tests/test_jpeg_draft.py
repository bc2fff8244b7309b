"""Augmented reads decode a large JPEG at a reduced DCT scale; evaluation reads decode it
whole (radjax/data/images.py)."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from radjax.data import images

KW = dict(size=64, num_channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, record_id='r')


def _film(h=1100, w=900, mode='L') -> bytes:
  """A smooth chest-film-like JPEG with some texture (not a constant image)."""
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  x = 128 + 90 * np.sin(6 * xx) * np.cos(4 * yy) + 20 * np.sin(40 * xx * yy)
  img = Image.fromarray(np.clip(x, 0, 255).astype(np.uint8))
  if mode == 'RGB':
    img = Image.merge('RGB', [img, img.point(lambda v: v // 2), img.point(lambda v: 255 - v)])
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=92)
  return buf.getvalue()


def test_crop_source_side_leaves_the_smallest_crop_the_model_size():
  for size in (64, 224, 336, 448):
    for scale in (0.08, 0.5, 0.8, 1.0):
      side = images.crop_source_side(size, scale)
      # random_resized_crop's smallest crop: area fraction `scale`, aspect 3/4.
      assert np.sqrt(side * side * scale * 3 / 4) >= size
      assert np.sqrt((side - 1) ** 2 * scale * 3 / 4) < size  # and no larger than needed


@pytest.mark.parametrize('mode,num_channels,want_mode', [('L', 3, 'L'), ('RGB', 3, 'RGB'),
                                                         ('RGB', 1, 'L')])
def test_min_side_decodes_a_large_jpeg_smaller_but_not_below_it(mode, num_channels, want_mode):
  data = {'format': 'jpeg', 'data': _film(mode=mode)}
  full = images.decode_image(data, num_channels, 'r', keep_gray=True)
  small = images.decode_image(data, num_channels, 'r', keep_gray=True, min_side=120)
  assert full.size == (900, 1100)
  assert small.size == (225, 275)  # the decoder's 1/4 scale: 1/8 (113 px) is under 120
  smallest = images.decode_image(data, num_channels, 'r', keep_gray=True, min_side=100)
  assert smallest.size == (113, 138)  # 1/8, the smallest the decoder has
  assert small.mode == want_mode == full.mode
  # The same picture: both resized to 64 px agree to a few grey levels.
  a = np.asarray(full.resize((64, 64), Image.BICUBIC), np.float32)
  b = np.asarray(small.resize((64, 64), Image.BICUBIC), np.float32)
  assert np.abs(a - b).mean() < 2.0, np.abs(a - b).mean()


def test_png_and_small_jpegs_decode_at_full_scale():
  img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8))
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  png = images.decode_image({'format': 'png', 'data': buf.getvalue()}, 3, 'r', True, 100)
  assert png.size == (300, 300)
  jpeg = images.decode_image({'format': 'jpeg', 'data': _film(120, 90)}, 3, 'r', True, 100)
  assert jpeg.size == (90, 120)  # already under min_side: no scaling


def test_augmented_reads_use_the_reduced_scale_and_evaluation_reads_do_not(monkeypatch):
  data = {'format': 'jpeg', 'data': _film()}
  seen = []
  crop = images.random_resized_crop
  monkeypatch.setattr(images, 'random_resized_crop',
                      lambda img, *a, **k: seen.append(img.size) or crop(img, *a, **k))
  x = images.preprocess(data, **KW, rng=np.random.default_rng(0), crop_scale=(0.8, 1.0))
  assert seen == [(113, 138)]  # crop_source_side(64, 0.8) = 83 px: the 1/8 scale will do
  assert x.shape == (64, 64, 3) and np.isfinite(x).all()
  # Evaluation: exactly the full-scale decode resized (what the exported processor sees).
  want = Image.open(io.BytesIO(data['data'])).convert('RGB').resize((64, 64), Image.BICUBIC)
  want = (np.asarray(want, np.float32) / 255.0 - 0.5) / 0.25
  np.testing.assert_array_equal(images.preprocess(data, **KW), want)


def test_an_image_over_the_pixel_limit_is_refused_before_it_decodes(monkeypatch, tmp_path):
  """PIL only warns below twice its limit: a 330 KB 16-bit PNG of 13000 x 13000 took 4.5 GB
  to read. The limit (PIL's default) is shrunk here so the test stays small."""
  from radjax.data import schema
  buf = io.BytesIO()
  Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(buf, format='PNG')
  entry = {'data': buf.getvalue(), 'format': 'png', 'kind': '2d'}
  assert images.decode_image(entry, 1, 'ok').getpixel((0, 0)) == 156  # 40000 / 257, rounded
  # A truncated file is named too (PIL's own error names none).
  (tmp_path / 'cut.png').write_bytes(entry['data'][:-30])
  with pytest.raises(schema.SchemaError, match=r'cut\.png: does not decode as an image'):
    images.load_image(str(tmp_path / 'cut.png'))
  monkeypatch.setattr(images, 'MAX_PIXELS', 599)
  with pytest.raises(schema.SchemaError, match=r"record 'big': images: 30 x 20 pixels, over "
                                               r'the 599'):
    images.decode_image(entry, 1, 'big')
  (tmp_path / 'big.png').write_bytes(entry['data'])
  # Named once, and not called undecodable: it was '<path>: does not decode as an image:
  # <path>: 30 x 20 pixels ...'.
  with pytest.raises(schema.SchemaError) as e:
    images.load_image(str(tmp_path / 'big.png'))
  assert str(e.value).startswith(f'{tmp_path / "big.png"}: 30 x 20 pixels'), e.value
  assert str(e.value).count('big.png') == 1, e.value
  # PIL's own warning at its limit came before radjax's one-line error: no more. (In a
  # process of its own: pytest resets warning filters around each test.)
  import subprocess
  import sys
  code = ('from PIL import Image; from radjax.data import images, schema\n'
          'Image.MAX_IMAGE_PIXELS, images.MAX_PIXELS = 500, 599\n'
          f'try: images.load_image({str(tmp_path / "big.png")!r})\n'
          'except schema.SchemaError as e: print(e)')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert 'big.png: 30 x 20 pixels' in proc.stdout, proc.stderr
  assert 'DecompressionBombWarning' not in proc.stderr, proc.stderr
