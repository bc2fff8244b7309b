"""Build-time downscaling (`python -m data_prep build ... --max_short_side N`): sizes,
formats, bit depth and spacing kept; a reused build made otherwise is an error."""
import io
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from data_prep import __main__ as cli
from data_prep import build as build_lib
from data_prep import downscale
from radjax.data import images
from tests import data_prep_fixtures as fx
from tests.test_data_prep_mimic import dicom_id, mimic  # noqa: F401 (the fixture)


def _film(size=(480, 400), mode='L') -> np.ndarray:
  """A smooth radiograph-like image with fine detail (a ramp, a disc and ribs)."""
  w, h = size
  y, x = np.mgrid[0:h, 0:w].astype(np.float32)
  img = 60 + 100 * x / w + 80 * (((x - w / 2) / w) ** 2 + ((y - h / 2) / h) ** 2 < 0.05)
  img += 30 * np.sin(y / 7.0)
  img = np.clip(img, 0, 255).astype(np.uint8)
  return np.stack([img, img[::-1], img[:, ::-1]], -1) if mode == 'RGB' else img


def _entry(array: np.ndarray, fmt: str, spacing=None, mode=None) -> dict:
  buf = io.BytesIO()
  Image.fromarray(array, mode).save(buf, format=fmt.upper(), quality=95)
  return {'data': buf.getvalue(), 'format': fmt, 'kind': '2d', 'spacing': spacing}


def _open(entry: dict) -> Image.Image:
  img = Image.open(io.BytesIO(entry['data']))
  img.load()
  return img


def test_target_size_keeps_the_aspect_and_never_upscales():
  assert downscale.target_size((2544, 3056), 512) == (512, 615)  # a MIMIC-CXR-JPG film
  assert downscale.target_size((3056, 2544), 512) == (615, 512)
  assert downscale.target_size((512, 900), 512) is None
  assert downscale.target_size((300, 200), 512) is None
  with pytest.raises(ValueError, match='max_short_side 4: .* at least 8'):
    downscale.check_side(4, 'mimic_cxr')
  with pytest.raises(ValueError, match="max_short_side '512'"):
    downscale.check_side('512', 'mimic_cxr')


@pytest.mark.parametrize('fmt,mode', [('jpeg', 'L'), ('jpeg', 'RGB'), ('png', 'L'),
                                      ('png', 'RGB')])
def test_downscaled_pixels_are_a_lanczos_resize_of_the_original(fmt, mode):
  film = _film(mode=mode)
  entry = _entry(film, fmt, spacing=[0.1, 0.2])
  out = downscale.downscale_image(entry, 120, 'record x')
  img = _open(out)
  assert img.format == fmt.upper() and img.mode == mode and img.size == (144, 120)
  assert out['format'] == fmt and out['kind'] == '2d'
  assert out['spacing'] == pytest.approx([0.1 * 480 / 144, 0.2 * 400 / 120])
  reference = np.asarray(_open(entry).resize((144, 120), Image.LANCZOS), np.float32)
  err = np.abs(np.asarray(img, np.float32) - reference)
  # PNG: the resize only (JPEG's draft is not used); JPEG: q95 and a 1/2 DCT-scale decode.
  assert err.mean() < (0.01 if fmt == 'png' else 1.5), err.mean()
  assert len(out['data']) < len(entry['data'])


def test_sixteen_bit_pngs_stay_sixteen_bit_and_read_as_before():
  wide = (_film().astype(np.uint16) * 257)  # 8-bit detail over the 16-bit range
  out = downscale.downscale_image(_entry(wide, 'png'), 100, 'record x')
  img = _open(out)
  assert img.mode.startswith('I;16') and img.size == (120, 100)
  pixels = np.asarray(img)
  assert pixels.max() > 255 * 200  # not squeezed into 8 bits
  as_read = np.asarray(images.to_8bit(img), np.float32)  # the reader's depth rule
  eight = np.asarray(Image.fromarray(_film()).resize((120, 100), Image.LANCZOS), np.float32)
  assert np.abs(as_read - eight).max() <= 1.0


def test_small_images_and_volumes_keep_their_bytes_and_opaque_alpha_is_dropped():
  small = _entry(_film((60, 50)), 'png')
  assert downscale.downscale_image(small, 64, 'x') is small
  volume = {'data': b'\0' * 64, 'format': 'npy', 'kind': '3d', 'spacing': [1.0, 1.0, 2.0]}
  assert downscale.downscale_image(volume, 8, 'x') is volume
  rgba = np.dstack([np.stack([_film()] * 3, -1), np.full((400, 480), 255, np.uint8)])
  out = _open(downscale.downscale_image(_entry(rgba, 'png', mode='RGBA'), 50, 'x'))
  assert out.mode == 'RGB' and out.size == (60, 50)
  ex = {'id': 'a', 'images': [small, _entry(_film(), 'jpeg')]}
  assert downscale.downscale_example(ex, None) is ex
  both = downscale.downscale_example(ex, 64)['images']
  assert both[0] is small and _open(both[1]).size == (77, 64)


def test_cli_build_downscales_and_refuses_to_reuse_a_build_made_otherwise(mimic, tmp_path,  # noqa: F811
                                                                         capsys):
  plain, _ = fx.build('mimic_cxr', mimic, str(tmp_path / 'plain'))
  out = str(tmp_path / 'small')
  assert cli.main(['build', 'mimic_cxr', '--manual_dir', mimic, '--data_dir', out,
                   '--max_short_side', '16']) == 0
  printed = capsys.readouterr().out  # TFDS's progress, then the summary
  path = json.loads(printed[printed.index('{\n'):])['dataset_dir']
  manifest = build_lib.read_manifest(path)
  assert manifest['max_short_side'] == 16
  assert build_lib.read_manifest(plain)['max_short_side'] is None
  assert manifest['counts'] == build_lib.read_manifest(plain)['counts']
  assert fx.rejects(path) == fx.rejects(plain)  # the same records fail, for the same reasons
  small, full = fx.examples(path, 'train'), fx.examples(plain, 'train')
  assert [e['id'] for e in small] == [e['id'] for e in full] == [dicom_id(0), dicom_id(1)]
  for s, f in zip(small, full):
    assert _open(f['images'][0]).size == (40, 32)  # the fixture's files, as published
    assert _open(s['images'][0]).size == (20, 16) and s['images'][0]['format'] == 'jpeg'
    assert s['report'] == f['report'] and s['labels'] == f['labels']
  shards = sorted(os.listdir(path))
  assert cli.main(['build', 'mimic_cxr', '--manual_dir', mimic, '--data_dir', out]) == 2
  err = capsys.readouterr().err
  assert f'{path} was built with max_short_side=16' in err and 'asks for None' in err
  assert sorted(os.listdir(path)) == shards and fx.examples(path, 'train') == small


def test_the_knob_travels_with_a_pickled_builder(tmp_path):
  """What Beam workers unpickle: the same downscaling as the launching process."""
  cls = build_lib.builder_class('mimic_cxr')
  again = pickle.loads(pickle.dumps(cls(data_dir=str(tmp_path), max_short_side=512)))
  assert again.max_short_side == 512
  assert pickle.loads(pickle.dumps(cls(data_dir=str(tmp_path)))).max_short_side is None
  with pytest.raises(ValueError, match='mimic_cxr: max_short_side 0'):
    cls(data_dir=str(tmp_path), max_short_side=0)

