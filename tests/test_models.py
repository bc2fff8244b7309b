"""Module-level tests: shapes, KV-cache decoding, splicing, layer selection."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.models import llm, vit, vlm
from radjax.models import projector as projector_lib
from radjax.models.runtime import Runtime


def small_llm(**kw):
  base = dict(vocab_size=101, embed_dim=48, num_layers=3, num_heads=6, num_kv_heads=2,
              mlp_dim=80, rope_theta=500.0)
  base.update(kw)
  return llm.LLMConfig(**base)


# Each scan mode and each tie/bias setting once in the default run; the rest are slow.
@pytest.mark.parametrize('scan,tie,bias', [
    (True, False, False), (False, True, True),
    pytest.param(False, False, False, marks=pytest.mark.slow),
    pytest.param(True, True, True, marks=pytest.mark.slow)])
def test_kv_cache_decoding_equals_full_forward(scan, tie, bias):
  cfg = small_llm(tie_embeddings=tie, qkv_bias=bias)
  model = llm.Decoder(cfg, Runtime(scan_layers=scan))
  b, t, split = 3, 40, 17
  tokens = jax.random.randint(jax.random.key(0), (b, t), 0, cfg.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  params = model.init(jax.random.key(1), jnp.zeros((b, t, cfg.embed_dim)), pos)
  embed = jax.jit(lambda x: model.apply(params, x, method=model.embed))
  apply = jax.jit(model.apply)
  full, _ = apply(params, embed(tokens), pos)

  cache = llm.init_cache(cfg, b, t + 5, jnp.float32)
  key_mask = jnp.arange(t + 5)[None, :].repeat(b, 0) < t
  logits, aux = apply(params, embed(tokens[:, :split]), pos[:, :split], cache, 0, key_mask)
  outs = [logits]
  for i in range(split, t):
    logits, aux = apply(params, embed(tokens[:, i:i + 1]), pos[:, i:i + 1], aux['cache'],
                        i, key_mask)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5)


def test_left_padding_matches_unpadded():
  cfg = small_llm()
  model = llm.Decoder(cfg)
  tokens = jax.random.randint(jax.random.key(0), (1, 12), 5, cfg.vocab_size)
  params = model.init(jax.random.key(1), jnp.zeros((1, 12, cfg.embed_dim)),
                      jnp.arange(12)[None])
  embed = jax.jit(lambda x: model.apply(params, x, method=model.embed))
  apply = jax.jit(model.apply)
  ref, _ = apply(params, embed(tokens), jnp.arange(12)[None])
  padded = jnp.concatenate([jnp.zeros((1, 4), jnp.int32), tokens], 1)
  mask = jnp.arange(16)[None] >= 4
  cache = llm.init_cache(cfg, 1, 16, jnp.float32)
  out, _ = apply(params, embed(padded), llm.positions_from_mask(mask), cache, 0, mask)
  np.testing.assert_allclose(out[:, 4:], ref, atol=2e-5)
  # Packed rows' segment ids have no meaning beside a cache: refused, not dropped.
  with pytest.raises(ValueError, match='segment_ids .* cache-free forward'):
    model.apply(params, embed(padded), llm.positions_from_mask(mask), cache, 0, mask,
                segment_ids=mask.astype(jnp.int32))


@pytest.mark.parametrize('scan', [pytest.param(True, marks=pytest.mark.slow), False])
def test_vit_select_layer_is_forward_only(scan):
  kw = dict(variant='clip', image_size=32, patch_size=8, embed_dim=32, num_heads=2, mlp_dim=64)
  rt = Runtime(scan_layers=scan)
  full = vit.ViT(vit.ViTConfig(**kw, num_layers=3, select_layer=-1), rt)
  pen = vit.ViT(vit.ViTConfig(**kw, num_layers=3, select_layer=-2), rt)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = jax.jit(full.init)(jax.random.key(1), x)
  # The same parameter tree whatever select_layer is (a forward-time choice).
  shapes = jax.tree.map(jnp.shape, jax.eval_shape(pen.init, jax.random.key(1), x))
  assert shapes == jax.tree.map(jnp.shape, params)
  feats, aux = jax.jit(pen.apply)(params, x)
  assert feats.shape == (2, 16, 32)  # class token dropped
  # The penultimate features are a 2-layer tower's output on the first 2 layers.
  two = vit.ViT(vit.ViTConfig(**kw, num_layers=2, select_layer=-1), rt)
  p = nn.meta.unbox(params)['params']
  if scan:
    p2 = {**p, 'layers': jax.tree.map(lambda a: a[:2], p['layers'])}
  else:
    p2 = {k: v for k, v in p.items() if k != 'layers_2'}
  want, _ = jax.jit(two.apply)({'params': p2}, x)
  np.testing.assert_allclose(feats, want, atol=1e-6)
  _, aux_full = jax.jit(full.apply)(params, x)
  assert 'pooled' in aux_full and 'pooled' not in aux
  # Gradients never reach the layer that does not run.
  grads = jax.grad(lambda q: pen.apply({'params': q}, x)[0].sum())(p)
  last = (jax.tree.map(lambda g: g[2], grads['layers']) if scan else grads['layers_2'])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(last))


def test_siglip_has_no_class_token():
  cfg = vit.ViTConfig(variant='siglip', image_size=32, patch_size=8, embed_dim=32,
                      num_layers=2, num_heads=2, mlp_dim=64)
  model = vit.ViT(cfg)
  x = jnp.zeros((1, 32, 32, 3))
  params = jax.jit(model.init)(jax.random.key(0), x)
  assert 'class_embed' not in params['params']
  assert jax.jit(model.apply)(params, x)[0].shape == (1, 16, 32)


def test_splice_places_features_in_order():
  text = jnp.zeros((2, 7, 3))
  feats = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3) + 1
  tokens = jnp.array([[1, 9, 9, 2, 9, 9, 3], [9, 9, 9, 9, 5, 5, 5]])
  out = vlm.splice(text, feats, tokens, 9)
  np.testing.assert_array_equal(out[0, [1, 2, 4, 5]], feats[0])
  np.testing.assert_array_equal(out[1, :4], feats[1])
  assert float(jnp.abs(out[0, [0, 3, 6]]).sum()) == 0


def test_frozen_vision_gets_no_gradient():
  vcfg = vit.ViTConfig(variant='clip', image_size=16, patch_size=8, embed_dim=16, num_layers=1,
                       num_heads=2, mlp_dim=32)
  lcfg = small_llm(embed_dim=16, num_heads=2, num_kv_heads=1, num_layers=1)
  cfg = vlm.VLMConfig(vcfg, projector_lib.ProjectorConfig('mlp', 16, 16), lcfg, 7)
  model = vlm.VLM(cfg, vlm.VLMRuntime(vision=Runtime(frozen=True)))
  tokens = jnp.array([[1, 7, 7, 7, 7, 3]])
  images = jnp.ones((1, 1, 16, 16, 3))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, images))
  grads = jax.jit(jax.grad(lambda p: model.apply(p, tokens, images)[0].sum()))(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads['params']['vision']))
  assert float(jnp.abs(grads['params']['projector']['fc1']['kernel']).max()) > 0


def test_vit_drops_the_pixels_past_the_last_whole_patch():
  """SigLIP so400m/14 at 384 px (RadVLM): 27 x 27 patches, the last 6 pixels unused, as in
  HF; so the output does not depend on them."""
  cfg = vit.ViTConfig(variant='siglip', image_size=30, patch_size=8, embed_dim=16,
                      num_layers=1, num_heads=2, mlp_dim=32)
  assert cfg.num_patches == 9
  model = vit.ViT(cfg)
  x = jax.random.normal(jax.random.key(0), (1, 30, 30, 3))
  params = model.init(jax.random.key(1), x)
  out, _ = model.apply(params, x)
  assert out.shape[1] == 9
  changed = x.at[:, 24:, :, :].set(5.0).at[:, :, 24:, :].set(-5.0)
  assert jnp.allclose(model.apply(params, changed)[0], out)
  with pytest.raises(ValueError, match='smaller than patch_size'):
    vit.ViTConfig(variant='siglip', image_size=6, patch_size=8, embed_dim=16, num_layers=1,
                  num_heads=2, mlp_dim=32)


def test_splice_with_counts_starts_each_image_at_its_own_slots():
  """AnyRes: images of 2 and 3 tokens in slots of N = 3: placeholders 0-1 take image 0's
  first two features, 2-4 take image 1's (features 3-5); slot 2, image 0's unused plan
  token, is never read. A second row with counts [3, 1] checks the boundary the other way."""
  text = jnp.zeros((2, 8, 2))
  feats = jnp.arange(2 * 6 * 2, dtype=jnp.float32).reshape(2, 6, 2) + 1
  tokens = jnp.array([[1, 9, 9, 9, 9, 9, 2, 2], [9, 9, 9, 9, 2, 2, 2, 2]])
  out = vlm.splice(text, feats, tokens, 9, counts=jnp.array([[2, 3], [3, 1]]))
  np.testing.assert_array_equal(out[0, 1:6], feats[0, [0, 1, 3, 4, 5]])
  np.testing.assert_array_equal(out[1, :4], feats[1, [0, 1, 2, 3]])
  assert float(jnp.abs(out[0, [0, 6, 7]]).sum()) == 0 == float(jnp.abs(out[1, 4:]).sum())
