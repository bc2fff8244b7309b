"""AnyRes tiling and packing (radjax/data/anyres.py) against transformers' LLaVA-OneVision:
the image processor's tiles, the processor's token counts and the model's packed features."""
import types

import jax
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.llava_onevision import modeling_llava_onevision as hf_ov
from transformers.models.llava_onevision import processing_llava_onevision as hf_proc
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
  LlavaOnevisionImageProcessorPil,
)

from radjax.data import anyres, images, pixels

TILE, PATCH = 32, 8  # 4 x 4 tokens per tile
GRIDS = tuple((r, c) for r in range(1, 4) for c in range(1, 4))
PINPOINTS = [[r * TILE, c * TILE] for r, c in GRIDS]
# (height, width): square, tall, wide, tiny, and shapes that scale down under max_tiles 2.
SIZES = [(64, 64), (100, 37), (29, 90), (9, 11), (96, 96), (77, 120), (200, 61), (33, 33)]


def _spec(max_tiles=2):
  return anyres.AnyRes(tile=TILE, side=TILE // PATCH, grids=GRIDS, max_tiles=max_tiles)


def _image(h, w, mode='RGB', seed=0):
  x = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
  return Image.fromarray(x).convert(mode)


def _hf_processor(max_tiles=2):
  ip = LlavaOnevisionImageProcessorPil(size={'height': TILE, 'width': TILE},
                                       image_grid_pinpoints=PINPOINTS,
                                       image_mean=[0.5] * 3, image_std=[0.5] * 3)
  proc = hf_proc.LlavaOnevisionProcessor.__new__(hf_proc.LlavaOnevisionProcessor)
  proc.image_processor, proc.num_image_tokens = ip, (TILE // PATCH) ** 2
  proc.vision_aspect_ratio = f'anyres_max_{max_tiles}'
  proc.vision_feature_select_strategy, proc.image_token = 'full', '<image>'
  return ip, proc


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_tiles_are_the_processors_pixels(mode):
  """8-bit tiles, looked up through their table on the host and on the device, are the
  processor's pixels."""
  ip, _ = _hf_processor()
  table = images.pixel_table((0.5,) * 3, (0.5,) * 3, 3)
  spec = _spec()
  device = jax.jit(pixels.lookup)
  for i, (h, w) in enumerate(SIZES):
    img = _image(h, w, mode, seed=i)
    tiles = anyres.tiles(img, spec)
    assert tiles.dtype == np.uint8 and tiles.shape[-1] == (1 if mode == 'L' else 3)
    ours = pixels.lookup(tiles, table)
    theirs = ip(img.convert('RGB'), return_tensors='np')['pixel_values'][0]
    assert len(tiles) == len(theirs) == 1 + np.prod(anyres.best_grid(h, w, spec))
    np.testing.assert_array_equal(ours, theirs.transpose(0, 2, 3, 1))
    tables = np.broadcast_to(table, (len(tiles), *table.shape))
    np.testing.assert_array_equal(np.asarray(device(tiles, tables)), ours)


@pytest.mark.parametrize('max_tiles', [2, 9])
def test_token_counts_are_the_processors(max_tiles):
  _, proc = _hf_processor(max_tiles)
  spec = _spec(max_tiles)
  scaled = 0
  for h, w in SIZES + [(1000, 400), (300, 2000)]:
    _, _, count = anyres.plan(h, w, spec)
    want = proc._get_number_of_features(h, w, TILE, TILE)
    assert count == want, (h, w)
    assert count <= spec.max_tokens
    scaled += count < spec.tile_tokens + np.prod(anyres.best_grid(h, w, spec)) * (
        spec.tile_tokens + spec.side)
  assert scaled, 'no size was cut or scaled down: the test would miss those paths'


def test_max_tokens_bounds_every_size_closely():
  """At RadVLM's size (384 px tiles of 27 x 27 tokens, up to 6 x 6, anyres_max_9): the
  static length covers every film size and wastes under 1 % of it."""
  spec = anyres.AnyRes(tile=384, side=27, grids=tuple(
      (r, c) for r in range(1, 7) for c in range(1, 7)), max_tiles=9)
  counts = [anyres.plan(h, w, spec)[2] for h in range(300, 4000, 97) for w in range(300, 4000, 89)]
  assert max(counts) <= spec.max_tokens
  assert max(counts) >= 0.99 * spec.max_tokens


def test_the_plan_packs_features_as_the_model_does():
  spec = _spec(2)
  t, e = spec.tile_tokens, 5
  fake = types.SimpleNamespace(config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=TILE, patch_size=PATCH),
      image_grid_pinpoints=PINPOINTS))
  rng = np.random.default_rng(1)
  newline = rng.normal(size=e).astype(np.float32)
  for h, w in SIZES:
    n = 1 + int(np.prod(anyres.best_grid(h, w, spec)))
    feats = rng.normal(size=(n, t, e)).astype(np.float32)
    (packed,), _ = hf_ov.LlavaOnevisionModel.pack_image_features(
        fake, [torch.from_numpy(feats)], torch.tensor([[h, w]]), torch.from_numpy(newline),
        vision_aspect_ratio='anyres_max_2')
    index, weight, count = anyres.plan(h, w, spec)
    table = np.zeros((spec.slots * t + 1, e), np.float32)
    table[:n * t] = feats.reshape(-1, e)
    table[-1] = newline
    ours = np.einsum('nk,nke->ne', weight, table[index])
    assert count == len(packed)
    np.testing.assert_allclose(ours[:count], packed.numpy(), atol=1e-5)
    assert not weight[count:].any()


def test_bad_grids_are_named():
  with pytest.raises(ValueError, match='config.model.anyres_grids'):
    anyres.AnyRes(tile=TILE, side=4, grids=((0, 2),))
  with pytest.raises(ValueError, match='config.model.anyres_grids'):
    anyres.AnyRes(tile=TILE, side=4, grids=())


def test_several_images_are_one_square_tile_each_as_the_processor_reads_them():
  """An example with two images: each padded to a square in the mean colour, one tile,
  its tokens the base's and a newline (the processor's count and the model's packing)."""
  ip, proc = _hf_processor()
  spec = _spec()
  table = images.pixel_table((0.5,) * 3, (0.5,) * 3, 3)
  pair = [_image(45, 70, seed=1), _image(100, 37, 'L', seed=2)]
  theirs = ip([[p.convert('RGB') for p in pair]], return_tensors='np')
  assert list(theirs['batch_num_images']) == [2]
  for k, img in enumerate(pair):
    ours = pixels.lookup(anyres.square_tile(img, spec, (0.5,) * 3), table)
    np.testing.assert_array_equal(ours, theirs['pixel_values'][k, 0].transpose(1, 2, 0))
  index, weight, count = anyres.square_plan(spec)
  assert count == len(proc.replace_image_token(
      {'batch_num_images': [2], 'image_sizes': theirs['image_sizes'],
       'pixel_values': theirs['pixel_values']}, 0)) // len('<image>')
  fake = types.SimpleNamespace(config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=TILE, patch_size=PATCH),
      image_grid_pinpoints=PINPOINTS))
  feats = np.random.default_rng(0).normal(size=(1, spec.tile_tokens, 3)).astype(np.float32)
  newline = np.ones(3, np.float32)
  (packed,), _ = hf_ov.LlavaOnevisionModel.pack_image_features(
      fake, [torch.from_numpy(feats)], torch.tensor([[45, 70]]), torch.from_numpy(newline))
  table_ = np.zeros((spec.slots * spec.tile_tokens + 1, 3), np.float32)
  table_[:spec.tile_tokens] = feats[0]
  table_[-1] = newline
  np.testing.assert_array_equal(np.einsum('nk,nke->ne', weight, table_[index])[:count], packed)


def test_bf16_tile_features_are_hfs_bilinear_rounded_once():
  """Under bf16 the plan's weighted taps are summed in f32 and rounded once, as torch's
  bf16 interpolate does: weights rounded to bf16 and summed in bf16 put about a fifth of
  the scaled-down tokens' values an ulp or more off HF's."""
  import functools

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from radjax.models import llm, vit, vlm
  from radjax.models import projector as projector_lib
  from radjax.models.runtime import Runtime

  spec = _spec(2)
  e = 64
  vcfg = vit.ViTConfig(variant='siglip', image_size=TILE, patch_size=PATCH, embed_dim=16,
                       num_layers=1, num_heads=2, mlp_dim=32)
  lcfg = llm.LLMConfig(vocab_size=11, embed_dim=e, num_layers=1, num_heads=2, num_kv_heads=1,
                       mlp_dim=32)
  cfg = vlm.VLMConfig(vcfg, projector_lib.ProjectorConfig('mlp', 16, e, image_newline=True),
                      lcfg, 7, anyres_grids=GRIDS, anyres_max_tiles=2)
  bf16 = Runtime(dtype=jnp.bfloat16)
  model = vlm.VLM(cfg, vlm.VLMRuntime(bf16, bf16, bf16))
  h, w = 77, 120  # a 3 x 3 grid scaled down to ~2 tiles' tokens
  images = jax.random.normal(jax.random.key(0), (1, 1, spec.slots, TILE, TILE, 3))
  params = nn.meta.unbox(jax.jit(functools.partial(model.init, method=vlm.VLM.encode_images))(
      jax.random.key(1), images[:, :, 0]))  # the tower and the projector
  index, weight, count = anyres.plan(h, w, spec)

  @jax.jit
  def run(params):
    tiles = model.apply(params, images, index[None, None], weight[None, None],
                        method=vlm.VLM.encode_tiles)
    return tiles, model.apply(params, images[0], method=vlm.VLM.encode_images)

  (ours, counts), feats = run(params)
  assert ours.dtype == jnp.bfloat16 and int(counts[0, 0]) == count
  feats = feats.reshape(spec.slots, spec.tile_tokens, e)  # bf16, each tile's
  n = 1 + int(np.prod(anyres.best_grid(h, w, spec)))
  to_torch = lambda x: torch.from_numpy(np.asarray(x, np.float32)).bfloat16()
  fake = types.SimpleNamespace(config=types.SimpleNamespace(
      vision_config=types.SimpleNamespace(image_size=TILE, patch_size=PATCH),
      image_grid_pinpoints=PINPOINTS))
  (packed,), _ = hf_ov.LlavaOnevisionModel.pack_image_features(
      fake, [to_torch(feats[:n])], torch.tensor([[h, w]]),
      to_torch(params['params']['projector']['image_newline'].astype(jnp.bfloat16)),
      vision_aspect_ratio='anyres_max_2')
  ours = np.asarray(ours[0, :count], np.float32)
  want = packed.float().numpy()
  assert ours.shape == want.shape
  off = float(np.mean(ours != want))  # torch sums the taps in another order: a few ulps
  assert off < 0.03, f'{off:.1%} of the values differ from HF bf16'
  np.testing.assert_allclose(ours, want, rtol=2 ** -7, atol=1e-6)


def test_a_tower_that_keeps_its_class_token_is_refused():
  """A plan indexes each tile's (image_size / patch_size)^2 patch tokens (and the newline
  after every tile's): a tower handing the projector its class token too (CLIP's 'full',
  EVA) would shift every index past the first tile's, so AnyRes refuses it, named (HF's
  pack_image_features refuses it too)."""
  from radjax.core import defaults
  from radjax.models import factory

  c = defaults.get_config()
  c.model.anyres_grids, c.model.anyres_max_tiles = ((1, 1), (1, 2)), 2
  c.model.projector.kind = 'mlp'
  c.model.vision.variant, c.model.vision.keep_class_token = 'clip', True
  with pytest.raises(ValueError, match='keep_class_token'):
    factory.vlm_config(c.model, image_token_id=5)
  c.model.vision.keep_class_token = False  # CLIP's 'default': patches only
  assert factory.vlm_config(c.model, image_token_id=5).anyres_grids == ((1, 1), (1, 2))
