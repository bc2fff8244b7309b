"""8-bit pixels to the device (config.data.pixels, radjax/data/pixels.py): the device's
lookup gives exactly the floats the host gives with 'float32' (image slots with and
without augmentation, AnyRes tiles, a first image; gray and RGB), unused slots read as
zeros, and the task's loss is the same either way."""
import io

import jax
import numpy as np
import pytest
from PIL import Image

from radjax import run as run_lib
from radjax.core import config_checks
from radjax.data import anyres, pipeline, pixels, processors, schema
from tests.conftest import tiny_config

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
SPEC = anyres.AnyRes(tile=32, side=4, grids=tuple((r, c) for r in range(1, 4)
                                                  for c in range(1, 4)), max_tiles=2)
# mode of the stored PNG: gray, colour, and a gray film saved as RGB (equal channels)
KINDS = ('L', 'RGB', 'RGB_gray')
device = jax.jit(pixels.as_floats)


def _entry(kind: str, h=90, w=70, seed=1) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (h, w, 1 if kind == 'L' else 3), dtype=np.uint8)
  if kind == 'RGB_gray':
    x = np.repeat(x[..., :1], 3, -1)
  buf = io.BytesIO()
  Image.fromarray(x[..., 0] if kind == 'L' else x).save(buf, 'PNG')
  return {'kind': '2d', 'format': 'png', 'data': buf.getvalue()}


def _modes(kind: str):
  return ('uint8', 'gray8') if kind != 'RGB' else ('uint8',)


def _same(sent: dict, host: dict):
  """The device's floats of `sent` are `host`'s bit for bit; the other arrays equal."""
  got = device(sent)
  assert set(got) == set(host)
  for k in host:
    np.testing.assert_array_equal(np.asarray(got[k]), host[k], err_msg=k)
  assert got['images'].dtype == np.float32


@pytest.mark.parametrize('augment', [False, True])
@pytest.mark.parametrize('kind', KINDS)
def test_image_slots_device_floats_are_the_hosts(kind, augment):
  example = {'id': 'r', 'images': [_entry(kind)]}  # 1 of 2 slots: the other reads zeros
  host = processors.ImageSlots(48, 3, 2, MEAN, STD, augment=augment)(
      example, np.random.default_rng(3))
  assert host['images'].dtype == np.float32 and not host['images'][1].any()
  for mode in _modes(kind):
    sent = processors.ImageSlots(48, 3, 2, MEAN, STD, augment=augment, pixels=mode)(
        example, np.random.default_rng(3))
    p = pixels.channels(mode, 3)
    assert sent['images'].dtype == np.uint8 and sent['images'].shape == (2, 48, 48, p)
    assert sent['pixel_table'].shape == (2, 256, 3) and not sent['pixel_table'][1].any()
    _same(sent, host)


@pytest.mark.parametrize('count', [1, 2])
@pytest.mark.parametrize('kind', KINDS)
def test_tile_slots_device_floats_are_the_hosts(kind, count):
  """AnyRes: one film's grid (slots past it zero), or one square tile per image of two."""
  example = {'id': 'r', 'images': [_entry(kind, 100, 37, seed=s) for s in range(count)]}
  half = (0.5,) * 3
  host = processors.TileSlots(SPEC, 3, 2, half, half)(example, None)
  grid = 1 + int(np.prod(anyres.best_grid(100, 37, SPEC)))
  used = 1 if count > 1 else grid
  assert 1 < grid < SPEC.slots
  assert not host['images'][0, used:].any()
  for mode in _modes(kind):
    sent = processors.TileSlots(SPEC, 3, 2, half, half, pixels=mode)(example, None)
    assert sent['images'].shape == (2, SPEC.slots, 32, 32, pixels.channels(mode, 3))
    assert sent['pixel_table'][0, :used].any() and not sent['pixel_table'][0, used:].any()
    _same(sent, host)


@pytest.mark.parametrize('kind', KINDS)
def test_first_image_device_floats_are_the_hosts(kind):
  """The classifier's and the codec's input (augmented: crop and jitter)."""
  example = {'id': 'r', 'images': [_entry(kind)]}
  kw = dict(size=40, num_channels=3, mean=MEAN, std=STD)
  host = processors.first_image(example, 'a test', rng=np.random.default_rng(5), **kw)
  for mode in _modes(kind):
    sent = processors.first_image(example, 'a test', rng=np.random.default_rng(5),
                                  pixels=mode, **kw)
    assert sent['images'].shape == (40, 40, pixels.channels(mode, 3))
    _same(sent, {'images': host['images']})


def test_gray8_refuses_a_colour_image_by_name():
  slots = processors.ImageSlots(48, 3, 1, MEAN, STD, pixels='gray8')
  with pytest.raises(schema.SchemaError, match="'film_7'.*colour.*'uint8'"):
    slots({'id': 'film_7', 'images': [_entry('RGB')]}, None)


def test_gray8_anyres_of_several_images_needs_a_gray_mean():
  """Several images are padded in the mean colour: CLIP's is not gray."""
  with pytest.raises(ValueError, match="pixels='gray8'.*max_images=2"):
    processors.TileSlots(SPEC, 3, 2, MEAN, STD, pixels='gray8')
  processors.TileSlots(SPEC, 3, 1, MEAN, STD, pixels='gray8')  # one image: tiled, no pad


def test_the_knob_is_checked():
  config = tiny_config()
  config.data.pixels = 'bfloat16'
  assert any('config.data.pixels' in e for e in config_checks.errors(config))


def test_a_radvlm_film_is_12x_fewer_bytes():
  """configs/radvlm.py's AnyRes example: 37 tile slots of 384 px; gray8 sends a byte per
  pixel and 37 tables, float32 four per channel."""
  from configs import radvlm
  c = radvlm.get_config('')
  v = c.model.vision
  slots = anyres.AnyRes(tile=v.image_size, side=v.image_size // v.patch_size,
                        grids=c.model.anyres_grids).slots
  assert (slots, c.data.pixels) == (37, 'gray8')

  def image_bytes(mode):
    fields = pixels.fields(mode, (c.data.max_images, slots), v.image_size, v.num_channels)
    return sum(np.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in fields.values())
  assert image_bytes('float32') == 37 * 384 * 384 * 3 * 4
  assert image_bytes('gray8') == 37 * 384 * 384 + 37 * 256 * 3 * 4
  assert image_bytes('float32') / image_bytes('gray8') > 11.7


@pytest.mark.parametrize('mode', ['uint8', 'gray8'])
def test_the_loss_is_the_float32_batchs(demo_data, mode):
  """The demo's first training batch, sent 8-bit, gives the task's loss of the same batch
  as host floats (augmentation on: the records' jitter travels in their tables)."""
  losses = {}
  for m in ('float32', mode):
    config = tiny_config(demo_data)
    config.data.pixels, config.data.augment = m, True
    task = run_lib.make_task(config)
    batch = next(pipeline.make_iterator(pipeline.train_dataset(config, task.processor,
                                                               'train'), 0))
    batch = {k: v for k, v in batch.items() if k in task.batch_spec()}
    assert (batch['images'].dtype == np.uint8) == (m != 'float32')
    model = task.model()
    params = model.init(jax.random.key(0), *task.init_inputs())['params']
    losses[m] = jax.jit(lambda p, b: task.loss(model, p, b, None))(params, batch)
  for k in losses['float32']:
    np.testing.assert_array_equal(losses[mode][k], losses['float32'][k], err_msg=k)


def test_image_slots_mark_only_the_real_images():
  buf = io.BytesIO()
  Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)).save(buf, 'PNG')
  image = {'data': buf.getvalue(), 'format': 'png', 'kind': '2d'}
  slots = processors.ImageSlots(image_size=16, num_channels=3, max_images=3,
                                mean=(0.5,) * 3, std=(0.25,) * 3, pixels='uint8')
  for n in (0, 1, 2, 3):
    out = slots({'id': 'r', 'images': [image] * n}, None)
    np.testing.assert_array_equal(out['image_mask'], np.arange(3) < n)


@pytest.mark.parametrize('recipe', ['classifier', 'vqgan'])
def test_intensity_jitter_off_leaves_a_classifier_and_a_codec_the_crop_alone(recipe):
  """config.data.intensity_jitter=False was honoured by task 'vlm' alone: the classifier's
  and the codec's augmented images were still jittered (the knob did nothing there)."""
  import importlib

  from radjax import tasks
  config = importlib.import_module(f'configs.{recipe}').get_config('')  # no box targets
  config.data.augment, config.data.pixels = True, 'uint8'  # the table shows the jitter
  example = schema.make_example(id='r', images=[_entry('L')],
                                labels={n: 1 for n in config.data.label_names})
  raw = schema.encode(example)
  plain = tasks.make(config, None).processor()(raw, None)['pixel_table']
  jittered = tasks.make(config, None).processor()(raw, np.random.default_rng(5))
  assert not np.allclose(jittered['pixel_table'], plain)
  config.data.intensity_jitter = False
  cropped = tasks.make(config, None).processor()(raw, np.random.default_rng(5))
  np.testing.assert_array_equal(cropped['pixel_table'], plain)
  np.testing.assert_array_equal(cropped['images'], jittered['images'])  # the same crop
