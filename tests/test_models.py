"""Module-level tests: shapes, KV-cache decoding, splicing, layer selection."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.models import llm, vit, vlm
from radjax.models import projector as projector_lib


def small_llm(**kw):
  base = dict(vocab_size=101, embed_dim=48, num_layers=3, num_heads=6, num_kv_heads=2,
              mlp_dim=80, dtype=jnp.float32, rope_theta=500.0)
  base.update(kw)
  return llm.LLMConfig(**base)


@pytest.mark.parametrize('scan', [True, False])
@pytest.mark.parametrize('tie,bias', [(False, False), (True, True)])
def test_kv_cache_decoding_equals_full_forward(scan, tie, bias):
  cfg = small_llm(scan_layers=scan, tie_embeddings=tie, qkv_bias=bias)
  model = llm.Decoder(cfg)
  b, t, split = 3, 40, 17
  tokens = jax.random.randint(jax.random.key(0), (b, t), 0, cfg.vocab_size)
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  params = model.init(jax.random.key(1), jnp.zeros((b, t, cfg.embed_dim)), pos)
  embed = jax.jit(lambda x: model.apply(params, x, method=model.embed))
  apply = jax.jit(model.apply)
  full, _ = apply(params, embed(tokens), pos)

  cache = llm.init_cache(cfg, b, t + 5)
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
  cache = llm.init_cache(cfg, 1, 16)
  out, _ = apply(params, embed(padded), llm.positions_from_mask(mask), cache, 0, mask)
  np.testing.assert_allclose(out[:, 4:], ref, atol=2e-5)


def test_vit_select_layer_runs_fewer_layers_and_keeps_the_rest():
  kw = dict(variant='clip', image_size=32, patch_size=8, embed_dim=32, num_layers=3,
            num_heads=2, mlp_dim=64, dtype=jnp.float32)
  full = vit.ViT(vit.ViTConfig(**kw, select_layer=-1))
  pen = vit.ViT(vit.ViTConfig(**kw, select_layer=-2))
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  p_full = jax.jit(full.init)(jax.random.key(1), x)
  p_pen = jax.jit(pen.init)(jax.random.key(1), x)
  n_full = sum(v.size for v in jax.tree.leaves(p_full))
  n_pen = sum(v.size for v in jax.tree.leaves(p_pen))
  assert n_full == n_pen  # the unused layer is kept for export
  feats, aux = jax.jit(pen.apply)(p_pen, x)
  assert feats.shape == (2, 16, 32)  # class token dropped
  _, aux_full = jax.jit(full.apply)(p_full, x)
  assert 'pooled' in aux_full and 'pooled' not in aux


def test_siglip_has_no_class_token():
  cfg = vit.ViTConfig(variant='siglip', image_size=32, patch_size=8, embed_dim=32,
                      num_layers=2, num_heads=2, mlp_dim=64, dtype=jnp.float32)
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
                       num_heads=2, mlp_dim=32, dtype=jnp.float32)
  lcfg = small_llm(embed_dim=16, num_heads=2, num_kv_heads=1, num_layers=1)
  cfg = vlm.VLMConfig(vcfg, projector_lib.ProjectorConfig('mlp', 16, jnp.float32), lcfg, 7,
                      freeze_vision=True)
  model = vlm.VLM(cfg)
  tokens = jnp.array([[1, 7, 7, 7, 7, 3]])
  images = jnp.ones((1, 1, 16, 16, 3))
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens, images))
  grads = jax.jit(jax.grad(lambda p: model.apply(p, tokens, images)[0].sum()))(params)
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads['params']['vision']))
  assert float(jnp.abs(grads['params']['projector']['fc1']['kernel']).max()) > 0
