"""Volume slots' compact transport (radjax/data/pixels.py volume_fields / volume_floats): a
scan's stored float16 voxels and a 2D image's 8-bit planes cross from the reader to the
device, which builds the tower's normalised float32 volumes from them, the same floats as
the host's float32 path (config.data.pixels='float32', radjax/data/volumes.py
sample_input)."""
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from radjax.data import pixels, processors, schema

SIZE, MAX_DEPTH, PATCH, SLOTS = 16, 24, 4, 4
# Per-channel mean and std (CLIP's): a channel mix-up or a missed division would show.
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _volume_entry(depth: int, seed: int) -> dict:
  vol = np.random.default_rng(seed).random((12, 10, depth)).astype(np.float16)
  buf = io.BytesIO()
  np.save(buf, vol, allow_pickle=False)
  return {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': None}


def _png_entry(seed: int, colour: bool) -> dict:
  shape = (20, 24, 3) if colour else (20, 24)
  px = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(px).save(buf, format='PNG')
  return {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': None}


def _mixed(record_id: str = 'mix') -> dict:
  """RadFM mixes them: a 10-slice scan, a grey film and a colour image (one slot empty)."""
  return schema.make_example(id=record_id, images=[
      _volume_entry(10, 0), _png_entry(1, colour=False), _png_entry(2, colour=True)])


def _slots(mode: str) -> processors.VolumeSlots:
  return processors.VolumeSlots(SIZE, 3, SLOTS, MAX_DEPTH, PATCH, MEAN, STD, pixels=mode)


def test_compact_volume_slots_give_the_tower_the_float32_paths_floats():
  """On the host (numpy: the reports' first view) bit for bit; on the device (jit, as the
  step's first op) a 2D image's and the padding's bit for bit (a gather of the host's
  table), a scan's within 1 ulp: XLA computes (x - mean) / std as (x - mean) * (1 / std)
  (its algebraic simplifier's divide by a broadcast), ~2% of the voxels 1 ulp off here.
  RadFM's own mean 0 and std 1 give exactly the floats."""
  ex = _mixed()
  want = _slots('float32')(ex, None)
  sent = _slots('uint8')(ex, None)
  depth = 8  # a 10-slice scan: the nearest multiple of the depth patch
  np.testing.assert_array_equal(sent['depth_mask'], want['depth_mask'])
  np.testing.assert_array_equal(want['depth_mask'][:3],
                                np.broadcast_to(np.arange(MAX_DEPTH) < depth, (3, MAX_DEPTH)))
  # The empty slot has no real slice: the model's slot switch skips it (RadFM pads every
  # example to 10 slots; one marked real would run the tower on zeros).
  assert not want['depth_mask'][3:].any()
  images = want['images']
  assert images.shape == (SLOTS, SIZE, SIZE, MAX_DEPTH, 3) and not images[3].any()
  assert not images[:, :, :, depth:].any() and all(images[i, :, :, :depth].std() > 0.1
                                                   for i in range(3))
  assert np.abs(images[2, ..., 0] - images[2, ..., 1]).max() > 0.1  # colour stays colour
  batch = {k: v[None] for k, v in sent.items() if k != 'image_mask'}
  device = jax.jit(pixels.as_floats)(batch)
  assert set(device) == {'images', 'depth_mask'}  # no voxels, tables or norms left over
  got = np.asarray(device['images'])[0]
  np.testing.assert_array_equal(got[1:], images[1:])
  np.testing.assert_array_max_ulp(got[0], images[0], maxulp=1)
  np.testing.assert_array_equal(pixels.as_floats(sent)['images'], images)
  # Each part once: the scan's voxels as stored (one channel), the images' 8-bit planes.
  assert sent['volumes'].dtype == np.float16 and sent['volumes'].shape == (SLOTS, SIZE, SIZE,
                                                                           MAX_DEPTH)
  assert sent['volumes'][0, :, :, :depth].any() and not sent['volumes'][1:].any()
  assert sent['images'].dtype == np.uint8 and not sent['images'][0].any()
  np.testing.assert_array_equal(sent['volume_norm'][0], np.float32([MEAN, STD]))
  assert not sent['volume_norm'][1:].any() and not sent['pixel_table'][[0, 3]].any()
  # RadFM's ToTensor() pixels (mean 0, std 1): x * (1 / 1) is x, the device's bit for bit.
  radfm = {'mean': (0.0,) * 3, 'std': (1.0,) * 3}
  want = dataclasses.replace(_slots('float32'), **radfm)(ex, None)['images']
  sent = dataclasses.replace(_slots('uint8'), **radfm)(ex, None)
  got = jax.jit(pixels.as_floats)({k: v[None] for k, v in sent.items() if k != 'image_mask'})
  np.testing.assert_array_equal(np.asarray(got['images'])[0], want)


def test_gray8_volume_slots_send_one_channel_and_refuse_a_colour_image():
  """config.data.pixels='gray8' holds for a volume sample's 2D images as for 2D batches:
  a grey film's plane is one byte a pixel; a colour image is refused naming its record."""
  grey = schema.make_example(id='grey', images=[_volume_entry(5, 3), _png_entry(4, False)])
  sent = _slots('gray8')(grey, None)
  assert sent['images'].shape == (SLOTS, SIZE, SIZE, 1)
  np.testing.assert_array_equal(pixels.as_floats(sent)['images'],
                                _slots('float32')(grey, None)['images'])
  with pytest.raises(schema.SchemaError, match="record 'mix'.*colour image.*'uint8'"):
    _slots('gray8')(_mixed(), None)


def test_a_volume_examples_bytes_shrink_by_the_expected_factor():
  """Per example: float32 [M, S, S, D, C] before; float16 voxels [M, S, S, D], the 2D
  planes [M, S, S, C], their tables [M, 256, C] and norms [M, 2, C] now (the masks alike).
  At RadFM's full sizes (10 x 512 x 512 x 64, C = 3) 2.01 GB -> 0.34 GB, a factor 5.9
  (BENCHMARKS.md); at this small shape the tables weigh more: 4.56."""
  m, s, d, c = SLOTS, SIZE, MAX_DEPTH, 3
  masks = m + m * d  # image_mask, depth_mask: one byte a bool
  nbytes = lambda out: sum(v.nbytes for v in out.values())
  before, after = nbytes(_slots('float32')(_mixed(), None)), nbytes(_slots('uint8')(_mixed(), None))
  assert before == m * s * s * d * c * 4 + masks
  assert after == m * s * s * d * 2 + m * s * s * c + m * 256 * c * 4 + m * 2 * c * 4 + masks
  assert round(before / after, 2) == 4.56


def test_the_volume_batch_spec_is_what_the_slots_send():
  """The task's volume batch (what the step compiles for and the batch shardings cover)
  has the slots' fields, shapes and dtypes, in either transport; the '' spec (the
  shardings') holds the compact fields too."""
  from configs import radfm
  from radjax import tasks
  c = radfm.get_config('size=micro')
  c.model.image_token_id = 4  # no tokenizer
  c.data.volume_image_size = 0  # the slots' own size (the pipeline resizes after them)
  for mode in ('uint8', 'gray8', 'float32'):
    c.data.pixels = mode
    task = tasks.make(c, None)
    spec, slots = task.batch_spec('volume'), task.slots['volume']
    ex = schema.make_example(id='v', images=[_volume_entry(9, 5)])
    for k, v in slots(ex, None).items():
      assert (spec[k].shape, spec[k].dtype) == (v.shape, v.dtype), (mode, k)
    assert ({pixels.VOLUMES, pixels.NORM} <= set(task.batch_spec())) == (mode != 'float32')


def test_the_full_recipes_volume_example_shrinks_as_benchmarks_md_says():
  """bench/volume_bytes.py's numbers at RadFM's full sizes (10 slots of 512 x 512 x 64,
  C = 3): the float32 volumes' 12 bytes a voxel against 2, plus the 2D planes, tables and
  norms; 2013.3 -> 343.5 MB, 5.86x."""
  from bench import volume_bytes
  from configs import radfm
  c = radfm.get_config('')
  c.data.volume_image_size = 0  # the recipe trains deep batches at 256 in-plane since
  got = {t: sum(volume_bytes.spec_bytes(volume_bytes.with_pixels(c, t)).values())
         for t in volume_bytes.TRANSPORTS}
  voxels, plane = 10 * 512 * 512 * 64, 10 * 512 * 512
  assert got['float32'] - got['compact'] == (voxels * 12 - voxels * 2 - plane * 3
                                             - 10 * 256 * 3 * 4 - 10 * 2 * 3 * 4)
  assert (round(got['float32'] / 1e6, 1), round(got['compact'] / 1e6, 1)) == (2013.3, 343.5)


def test_the_tower_expands_compact_volume_slots_one_at_a_time():
  """With VLMRuntime.volume_floats (what the VLM task gives a vit3d model) the step hands
  the tower its compact slots, and each slot's floats are built inside the slot scan:
  features and parameter gradients are those of the floats built up front (the step
  before), and the program's temporaries no longer hold every slot's floats (RadFM's
  full recipe: 10 slots of 256 x 256 x 64 x 3 floats, 0.5 GB an example)."""
  from configs import radfm
  from radjax.models import factory, vlm
  c = radfm.get_config('size=micro')
  v = c.model.vision
  v.max_depth, v.num_layers = 24, 1
  cfg = factory.vlm_config(c.model, image_token_id=4)
  rt = factory.vlm_runtime(c)
  slots = processors.VolumeSlots(v.image_size, 3, SLOTS, 24, v.depth_patch_size, MEAN, STD,
                                 pixels='uint8')
  rows = [slots(_mixed(), None), slots(schema.make_example(
      id='deep', images=[_volume_entry(20, 7)]), None)]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != 'image_mask'}
  compact = {k: batch[k] for k in ('images', pixels.TABLE, pixels.VOLUMES, pixels.NORM)}
  up_front = vlm.VLM(cfg, rt)
  per_slot = vlm.VLM(cfg, dataclasses.replace(rt, volume_floats=pixels.volume_floats))
  depth_mask = batch['depth_mask']
  params = up_front.init(jax.random.key(0), np.ones((1, 4), np.int32),
                         pixels.as_floats(batch)['images'][:1, :1], depth_mask=depth_mask[:1, :1])

  def compiled(model, inputs):
    def f(p, x, dm):
      feats, mask = model.apply(p, inputs(x, dm), dm, method=vlm.VLM._tower)
      return jnp.sum(jnp.where(mask[..., None], feats, 0) ** 2), mask
    return jax.jit(jax.value_and_grad(f, has_aux=True)).lower(params, compact,
                                                               depth_mask).compile()

  before = compiled(up_front, lambda x, dm: pixels.volume_floats({**x, 'depth_mask': dm}))
  now = compiled(per_slot, lambda x, dm: x)
  (want, want_mask), want_grad = before(params, compact, depth_mask)
  (got, got_mask), got_grad = now(params, compact, depth_mask)
  np.testing.assert_array_equal(got_mask, want_mask)
  assert got_mask.sum() > 0 and float(want) > 0
  np.testing.assert_allclose(got, want, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
               got_grad, want_grad)
  temp = lambda fn: fn.memory_analysis().temp_size_in_bytes
  slot_floats = 2 * v.image_size ** 2 * 24 * 3 * 4  # one slot of the batch, float32
  assert temp(now) <= temp(before) - (SLOTS - 1) * slot_floats


def test_rows_picked_before_the_floats_are_the_floats_resized_after():
  """volume_floats(..., rows) (the model's in-plane resize of compact slots, on several
  processes) picks rows and columns of the voxels and 8-bit planes first: the floats are
  those of the whole slots, resized after (on the host and on the device)."""
  ex = _mixed()
  sent = {k: v[None] for k, v in _slots('uint8')(ex, None).items() if k != 'image_mask'}
  rows = np.array([0, 2, 5, 7, 9, 12, 13, 15])  # nearest_indices-like, uneven steps
  whole = pixels.volume_floats(sent)
  want = whole[:, :, rows][:, :, :, rows]  # [B, M, H, W, D, C]
  assert want[0, :3].std() > 0.1  # a scan, a grey film and a colour image
  np.testing.assert_array_equal(pixels.volume_floats(sent, rows), want)
  got = jax.jit(pixels.volume_floats)(sent, rows)
  np.testing.assert_array_max_ulp(np.asarray(got), want, maxulp=1)
