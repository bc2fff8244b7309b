"""RadFM's vision parts: the 3D ViT (volumes, 2D images, padded depth) and the Perceiver
resampler (masking, an independent numpy forward), composed in the VLM and sharded."""
import dataclasses
import functools
import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.core import defaults, sharding
from radjax.models import factory, perceiver, projector, qformer, vit3d, vlm
from radjax.models.runtime import Runtime

TOWER = dict(image_size=16, patch_size=8, embed_dim=24, num_layers=2, num_heads=2, mlp_dim=32,
             max_depth=12, depth_patch_size=2, num_channels=2)
RESAMPLER = dict(in_dim=24, out_dim=20, num_queries=4, num_layers=2, num_heads=3, head_dim=5,
                 mlp_dim=40)


def _tower(rt=Runtime(), **kw):
  cfg = vit3d.ViT3DConfig(**{**TOWER, **kw})
  return cfg, vit3d.ViT3D(cfg, rt)


def _perturb(params, seed=0, scale=0.5):
  """Random values everywhere (zero biases and unit norms hide mistakes)."""
  leaves, tree = jax.tree.flatten(nn.meta.unbox(params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


def _volumes(n, depth, seed=0, channels=2, size=16):
  return jax.random.normal(jax.random.key(seed), (n, size, size, depth, channels))


def _unstack(params, n):
  """Scanned 'layers' [L, ...] -> unrolled 'layers_{i}' (what scan_layers=False reads)."""
  out = {k: v for k, v in params.items() if k != 'layers'}
  for i in range(n):
    out[f'layers_{i}'] = jax.tree.map(lambda a, i=i: a[i], params['layers'])
  return out


@pytest.mark.parametrize('stride', [False, True])
def test_2d_image_equals_volume_of_it_repeated_to_patch_depth(stride):
  cfg, model = _tower(position_stride=stride)
  img = jax.random.normal(jax.random.key(0), (3, 16, 16, 2))
  params = _perturb(jax.jit(model.init)(jax.random.key(1), img))
  feats2d, aux2d = jax.jit(model.apply)(params, img)
  volume = jnp.repeat(img[:, :, :, None], cfg.depth_patch_size, axis=3)
  feats3d, _ = jax.jit(model.apply)(params, volume)
  assert feats2d.shape == (3, 4, 24) and bool(aux2d['token_mask'].all())
  np.testing.assert_allclose(feats2d, feats3d, atol=1e-6)
  # The same tower on a volume whose slices differ gives other features (depth is seen).
  other = volume.at[:, :, :, 1].multiply(-1.0)
  assert float(jnp.abs(jax.jit(model.apply)(params, other)[0] - feats3d).max()) > 1e-2


def test_patch_order_and_width_are_radfms():
  """Tokens (h w d) and pixels (ph pw pd c), RadFM's Rearrange on [C, H, W, D]."""
  vol = np.arange(2 * 16 * 16 * 6 * 2, dtype=np.float32).reshape(2, 16, 16, 6, 2)
  ours = vit3d.patchify(jnp.asarray(vol), 8, 2)
  chw = vol.transpose(0, 4, 1, 2, 3)  # [B, C, H, W, D]
  want = einops.rearrange(chw, 'b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)',
                          p1=8, p2=8, pf=2)
  np.testing.assert_array_equal(ours, want)


@pytest.mark.parametrize('stride,scan', [(False, True), (True, False)])
def test_padded_depth_leaves_real_tokens_unchanged(stride, scan):
  cfg, model = _tower(Runtime(scan_layers=scan), position_stride=stride)
  real_depths = (4, 8)  # slices: 2 and 4 depth patches
  vols = [_volumes(1, d, seed=i) for i, d in enumerate(real_depths)]
  params = _perturb(jax.jit(model.init)(jax.random.key(1), vols[1]))
  apply = jax.jit(model.apply)
  alone = [apply(params, v)[0] for v in vols]

  pad_to = cfg.max_depth  # 12 slices: 6 depth patches
  junk = _volumes(2, pad_to, seed=7) * 3.0  # padding need not be zeros to be ignored
  batch = jnp.stack([junk[i].at[:, :, :d].set(v[0]) for i, (d, v) in
                     enumerate(zip(real_depths, vols))])
  depth_mask = jnp.arange(pad_to)[None] < jnp.array(real_depths)[:, None]
  feats, aux = apply(params, batch, depth_mask)
  grid = (2, 2, pad_to // cfg.depth_patch_size)
  assert feats.shape == (2, math.prod(grid), 24)
  tokens = feats.reshape(2, *grid, 24)
  mask = aux['token_mask'].reshape(2, *grid)
  for i, d in enumerate(real_depths):
    n = d // cfg.depth_patch_size
    assert bool(mask[i, :, :, :n].all()) and not bool(mask[i, :, :, n:].any())
    got = tokens[i, :, :, :n].reshape(-1, 24)
    np.testing.assert_allclose(got, alone[i][0], atol=1e-5, rtol=5e-5)
    assert float(jnp.abs(tokens[i, :, :, n:]).max()) == 0  # padded tokens come out as zeros
  # Without the mask the padding does reach the real tokens (the check above can fail).
  unmasked, _ = apply(params, batch)
  first = unmasked.reshape(2, *grid, 24)[0, :, :, :2].reshape(-1, 24)
  assert float(jnp.abs(first - alone[0][0]).max()) > 1e-2


def test_stretched_positions_follow_each_images_real_depth():
  """position_stride: slot k of an n-patch volume reads depth row (k+1)*(G//n)-1 of a G-row
  table (RadFM's PositionEmbeddingLearned3d), n counted per image from its mask."""
  patch_mask = jnp.array([[True, True, False, False, False, False],
                          [True, True, True, False, False, False]])
  rows, cols, depth = vit3d.position_rows((1, 2, 6), (2, 2, 6), patch_mask, stride=True)
  np.testing.assert_array_equal(rows, [1])  # one row of a 2-row table reads the last
  np.testing.assert_array_equal(cols, [0, 1])
  np.testing.assert_array_equal(depth[0, :2], [2, 5])  # 6 // 2 = 3
  np.testing.assert_array_equal(depth[1, :3], [1, 3, 5])  # 6 // 3 = 2
  assert int(depth.max()) <= 5  # padded slots stay inside the table
  rows, cols, depth = vit3d.position_rows((1, 2, 6), (2, 2, 6), patch_mask, stride=False)
  np.testing.assert_array_equal(rows, [0])
  np.testing.assert_array_equal(depth, [list(range(6))] * 2)


def test_vit3d_rejects_bad_shapes_and_configs():
  _, model = _tower()
  params = jax.jit(model.init)(jax.random.key(0), _volumes(1, 4))
  with pytest.raises(ValueError, match='depth 5 must be a multiple of depth_patch_size 2'):
    model.apply(params, _volumes(1, 5))
  with pytest.raises(ValueError, match='at most max_depth 12'):
    model.apply(params, _volumes(1, 14))
  with pytest.raises(ValueError, match='images have 3 channels'):
    model.apply(params, _volumes(1, 4, channels=3))
  with pytest.raises(ValueError, match='depth_mask shape'):
    model.apply(params, _volumes(1, 4), jnp.ones((1, 6), bool))
  with pytest.raises(ValueError, match='multiple of 3'):
    vit3d.ViT3DConfig(**{**TOWER, 'embed_dim': 32})
  with pytest.raises(ValueError, match='max_depth 10 is not a multiple'):
    vit3d.ViT3DConfig(**{**TOWER, 'max_depth': 10, 'depth_patch_size': 4})


# ---- Perceiver --------------------------------------------------------------------------

def _ln(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def _gelu(x):
  return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _reference_perceiver(p, feats, mask, num_layers):
  """Flamingo's resampler written out in float64 numpy from the unrolled parameters."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  feats = np.asarray(feats, np.float64)
  n = feats.shape[0]
  lat = np.broadcast_to(p['latents'], (n, *p['latents'].shape))
  keys = np.concatenate([mask, np.ones((n, lat.shape[1]), bool)], axis=1)
  for i in range(num_layers):
    w = p[f'layers_{i}']
    x, lt = _ln(feats, w['norm_media']), _ln(lat, w['norm_latents'])
    kv = np.concatenate([x, lt], axis=1)
    q = np.einsum('nqd,dhk->nhqk', lt, w['q']['kernel'])
    k = np.einsum('ntd,dhk->nhtk', kv, w['k']['kernel'])
    v = np.einsum('ntd,dhk->nhtk', kv, w['v']['kernel'])
    s = np.einsum('nhqk,nhtk->nhqt', q, k) / math.sqrt(q.shape[-1])
    s = np.where(keys[:, None, None, :], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    o = np.einsum('nhqt,nhtk->nhqk', a, v)
    lat = lat + np.einsum('nhqk,hke->nqe', o, w['o']['kernel'])
    h = _gelu(_ln(lat, w['mlp_norm']) @ w['fc1']['kernel'])
    lat = lat + h @ w['fc2']['kernel']
  lat = _ln(lat, p['norm'])
  return lat @ p['fc']['kernel'] + p['fc']['bias']


def _resampler(rt=Runtime(), **kw):
  cfg = perceiver.PerceiverConfig(**{**RESAMPLER, **kw})
  return cfg, perceiver.PerceiverProjector(cfg, rt)


def test_perceiver_matches_an_independent_numpy_forward():
  cfg, model = _resampler(Runtime(scan_layers=False))
  feats = jax.random.normal(jax.random.key(0), (2, 7, 24))
  mask = np.array([[True] * 7, [True] * 4 + [False] * 3])
  params = _perturb(jax.jit(model.init)(jax.random.key(1), feats, mask))['params']
  got = jax.jit(model.apply)({'params': params}, feats, mask)
  assert got.shape == (2, cfg.num_queries, cfg.out_dim) == (2, 4, 20)
  want = _reference_perceiver(params, feats, mask, cfg.num_layers)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert cfg.num_tokens(12345) == 4


def test_perceiver_ignores_masked_features():
  _, model = _resampler()
  real = jax.random.normal(jax.random.key(0), (1, 5, 24))
  params = _perturb(jax.jit(model.init)(jax.random.key(1), real))
  apply = jax.jit(model.apply)
  alone = apply(params, real)
  padded = jnp.concatenate([real, 10 * jax.random.normal(jax.random.key(2), (1, 6, 24))], 1)
  mask = jnp.arange(11)[None] < 5
  np.testing.assert_allclose(apply(params, padded, mask), alone, atol=1e-5)
  assert float(jnp.abs(apply(params, padded) - alone).max()) > 1e-2  # unmasked: it does see them


def test_other_projectors_take_the_token_mask():
  feats = jax.random.normal(jax.random.key(0), (1, 5, 24))
  padded = jnp.concatenate([feats, jax.random.normal(jax.random.key(2), (1, 3, 24))], 1)
  mask = jnp.arange(8)[None] < 5
  for kind in ('linear', 'mlp'):
    mod = {'linear': projector.LinearProjector, 'mlp': projector.MlpProjector}[kind](
        projector.ProjectorConfig(kind, 24, 16))
    params = _perturb(mod.init(jax.random.key(1), feats))
    out = mod.apply(params, padded, mask)
    np.testing.assert_allclose(out[:, :5], mod.apply(params, feats), atol=1e-6)
    assert float(jnp.abs(out[:, 5:]).max()) == 0
  qf = qformer.QFormerProjector(qformer.QFormerConfig(24, 16, num_queries=3, hidden_dim=12,
                                                      num_layers=2, num_heads=2, mlp_dim=20))
  params = _perturb(jax.jit(qf.init)(jax.random.key(1), feats))
  apply = jax.jit(qf.apply)
  np.testing.assert_allclose(apply(params, padded, mask), apply(params, feats), atol=1e-5)
  assert float(jnp.abs(apply(params, padded) - apply(params, feats)).max()) > 1e-3


# ---- runtime variants -------------------------------------------------------------------

@pytest.mark.parametrize('scan,remat', [(True, 'full'), (False, 'none'), (False, 'dots')])
def test_remat_and_scan_give_the_same_output(scan, remat):
  vol = _volumes(2, 8)
  depth_mask = jnp.arange(8)[None] < jnp.array([[8], [6]])
  _, base_tower = _tower()
  _, base_res = _resampler()
  tp = _perturb(jax.jit(base_tower.init)(jax.random.key(1), vol), scale=0.2)['params']
  feats, aux = jax.jit(base_tower.apply)({'params': tp}, vol, depth_mask)
  rp = _perturb(jax.jit(base_res.init)(jax.random.key(2), feats), scale=0.2)['params']
  want = jax.jit(base_res.apply)({'params': rp}, feats, aux['token_mask'])

  rt = Runtime(scan_layers=scan, remat_policy=remat)
  _, tower = _tower(rt)
  _, res = _resampler(rt)
  if not scan:
    tp, rp = _unstack(tp, TOWER['num_layers']), _unstack(rp, RESAMPLER['num_layers'])

  def run(tp, rp):
    f, a = tower.apply({'params': tp}, vol, depth_mask)
    return res.apply({'params': rp}, f, a['token_mask'])

  np.testing.assert_allclose(jax.jit(run)(tp, rp), want, atol=1e-5, rtol=1e-5)
  if remat == 'full':  # the backward pass recomputes the masked forward
    g = jax.jit(jax.grad(lambda tp: run(tp, rp).sum()))(tp)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    assert float(jnp.abs(g['patch_embed']['kernel']).max()) > 0


# ---- composition ------------------------------------------------------------------------

def _radfm_like_config():
  c = defaults.get_config()
  c.model.vision.update(kind='vit3d', image_size=16, patch_size=8, embed_dim=48, num_layers=2,
                        num_heads=2, mlp_dim=32, max_depth=12, depth_patch_size=2,
                        num_channels=2, position_stride=True)
  c.model.projector.update(kind='perceiver', num_queries=4, num_layers=2, num_heads=2,
                           head_dim=8, mlp_dim=64, norm_eps=1e-5)
  c.model.llm.update(vocab_size=64, embed_dim=32, num_layers=1, num_heads=4, num_kv_heads=2,
                     mlp_dim=64)
  c.model.image_token_id = 5
  c.runtime.dtype = 'float32'
  return c


def _vlm_batch(tokens_per_image, depth=8, pad_to=8):
  b, m = 2, 2
  prompt = [1, 2] + [5] * tokens_per_image + [3] + [5] * tokens_per_image + [9, 10, 11]
  tokens = jnp.array([prompt] * b)
  real = jax.random.normal(jax.random.key(3), (b, m, 16, 16, depth, 2))
  images = jnp.concatenate(
      [real, jax.random.normal(jax.random.key(4), (b, m, 16, 16, pad_to - depth, 2))], axis=4)
  depth_mask = jnp.broadcast_to(jnp.arange(pad_to) < depth, (b, m, pad_to))
  return tokens, real, images, depth_mask


def test_vlm_with_vit3d_and_perceiver_runs_on_volumes_and_images():
  c = _radfm_like_config()
  cfg = factory.vlm_config(c.model)
  assert isinstance(cfg.vision, vit3d.ViT3DConfig)
  assert isinstance(cfg.projector, perceiver.PerceiverConfig)
  assert (cfg.projector.in_dim, cfg.projector.out_dim) == (48, 32)
  assert cfg.tokens_per_image == 4 and cfg.vision.num_tokens == 2 * 2 * 6
  model = vlm.VLM(cfg, factory.vlm_runtime(c))
  tokens, real, padded, depth_mask = _vlm_batch(cfg.tokens_per_image, depth=4, pad_to=10)
  params = _perturb(jax.jit(model.init)(jax.random.key(0), tokens, real), scale=0.2)
  apply = jax.jit(model.apply)
  logits, _ = apply(params, tokens, real)
  assert logits.shape == (2, tokens.shape[1], 64) and bool(jnp.isfinite(logits).all())
  # The same volumes padded in depth, with their mask, give the same logits.
  got, _ = apply(params, tokens, padded, depth_mask=depth_mask)
  np.testing.assert_allclose(got, logits, atol=1e-4)
  # Different volumes change the logits after the first image's placeholders.
  other, _ = apply(params, tokens, real[:, ::-1])
  assert float(jnp.abs(other[:, -1] - logits[:, -1]).max()) > 1e-3
  # 2D images [B, M, H, W, C] through the same parameters.
  flat, _ = apply(params, tokens, real[..., 0, :])
  assert flat.shape == logits.shape and bool(jnp.isfinite(flat).all())
  assert float(jnp.abs(flat[:, -1] - logits[:, -1]).max()) > 1e-3


def test_volume_slots_run_at_their_bucket_and_empty_slots_not_at_all(monkeypatch):
  """RadFM's recipe pads every example to 10 slots and every slot to the batch's depth.
  The tower now runs slot by slot at the smallest depth bucket holding that slot's deepest
  volume, and skips a slot no row uses: NaN where it must not read (past a slot's
  bucket, an unused slot) leaves features and gradients equal to the untrimmed tower's on
  zeros, and finite (one read NaN would spread through the weight gradients)."""
  c = _radfm_like_config()
  cfg = factory.vlm_config(c.model)
  buckets = (4, 8)
  model = vlm.VLM(cfg, dataclasses.replace(factory.vlm_runtime(c), depth_buckets=buckets))
  b, m, d = 2, 3, 12
  real = np.array([[4, 8, 0], [2, 0, 0]])  # slot 1: bucket 8; slot 2: nobody's
  depth_mask = np.arange(d)[None, None] < real[..., None]
  rng = np.random.default_rng(0)
  zeros = np.where(depth_mask[:, :, None, None, :, None],
                   rng.normal(size=(b, m, 16, 16, d, 2)), 0).astype(np.float32)
  past = np.arange(d) >= np.array([4, 8, 0])[:, None]  # [M, D]: never read
  nan = np.where(past[None, :, None, None, :, None], np.nan, zeros).astype(np.float32)
  tokens = jnp.ones((b, 4), jnp.int32)
  params = _perturb(model.init(jax.random.key(0), tokens, zeros[:, :1, ..., :4, :],
                               depth_mask=depth_mask[:, :1, :4]), scale=0.2)
  weights = jax.random.normal(jax.random.key(1), (b * m, cfg.vision.num_tokens, 48))

  def tower(p, images, mask, model=model):
    feats, token_mask = model.apply(p, images, mask, method=vlm.VLM._tower)
    return jnp.sum(feats * weights), (feats, token_mask)

  grad = jax.jit(jax.grad(tower, has_aux=True))
  g, (feats, token_mask) = grad(params, nan, depth_mask)
  # The untrimmed tower: every slot alone (one slot, no buckets: the flat path), on zeros.
  flat_model = vlm.VLM(cfg, factory.vlm_runtime(c))
  flat = lambda p: tower(p, zeros.reshape(b * m, 1, *zeros.shape[2:]),
                         depth_mask.reshape(b * m, 1, d), flat_model)
  g_want, (f_want, mask_want) = jax.jit(jax.grad(flat, has_aux=True))(params)
  np.testing.assert_array_equal(token_mask, mask_want)
  np.testing.assert_allclose(feats, f_want, atol=2e-5)
  assert np.isfinite(feats).all() and not np.asarray(feats)[2::3].any()  # slot 2: zeros
  for got, want in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  # Without the buckets every slot runs as deep as the batch and reads the NaN; with
  # runtime.volume_slot_switch off, every slot in one call (the flat path's numbers).
  g_full, _ = jax.jit(jax.grad(lambda p: tower(p, nan, depth_mask, flat_model),
                               has_aux=True))(params)
  assert not np.isfinite(g_full['params']['vision']['patch_embed']['kernel']).all()
  # The model picks depth buckets on several processes only (one trims on the host).
  c.data.depth_buckets = buckets
  assert factory.vlm_runtime(c).depth_buckets == ()
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert factory.vlm_runtime(c).depth_buckets == buckets
  c.runtime.volume_slot_switch = False
  batched = vlm.VLM(cfg, factory.vlm_runtime(c))
  features = jax.jit(lambda p, x: tower(p, x, depth_mask, batched)[1][0])
  np.testing.assert_allclose(features(params, zeros), f_want, atol=2e-5)
  assert not np.isfinite(features(params, nan)).all()  # it reads every slot and slice


def test_2d_batches_of_a_vit3d_recipe_skip_the_slots_no_row_uses(monkeypatch):
  """RadFM's 2D batches (X-rays) carry no depth mask; the task makes one from their image
  mask, each image one depth patch deep, so the tower skips the slots no row uses as it
  does a volume batch's: loss and gradients equal those of every slot in one call
  (runtime.volume_slot_switch off), and the tower runs over the used slots only."""
  from configs import radfm
  from radjax import tasks
  c = radfm.get_config('size=micro')
  c.model.image_token_id = 4  # no tokenizer: synthetic ids
  c.data.max_images, c.runtime.dtype = 3, 'float32'
  task = tasks.make(c, None)
  cfg, v = task.model_cfg, task.model_cfg.vision
  b, m, n = 2, 3, cfg.tokens_per_image
  used = np.array([[True, False, False], [True, True, False]])  # slot 2: nobody's
  rows = [[1] + [4] * n + [7, 8] + [0] * n, [1] + [4] * (2 * n) + [9, 10]]
  tokens = jnp.array(rows, jnp.int32)
  images = np.random.default_rng(0).random((b, m, v.image_size, v.image_size, v.num_channels))
  batch = {'tokens': tokens, 'targets': jnp.roll(tokens, -1, axis=1),
           'loss_mask': (tokens > 4).astype(jnp.float32), 'image_mask': jnp.asarray(used),
           'images': jnp.asarray(np.where(used[..., None, None, None], images, 0), jnp.float32)}
  switch = task.model()
  one_call = vlm.VLM(cfg, dataclasses.replace(switch.rt, volume_slot_switch=False))
  params = _perturb(jax.jit(switch.init)(jax.random.key(0), *task.init_inputs()),
                    scale=0.2)['params']
  loss = lambda model: jax.jit(jax.value_and_grad(
      lambda p: task.loss(model, p, batch, None)['loss_sum']))
  (got, g), (want, g_want) = loss(switch)(params), loss(one_call)(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, w in zip(jax.tree.leaves(g), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, w, atol=1e-4, rtol=1e-4)  # summed slot by slot
  # The rows the tower runs over, counted as the program runs (a skipped branch runs none).
  calls = []
  patchify = vit3d.patchify

  def counted(x, *args):
    jax.debug.callback(lambda r: calls.append(int(r)), jnp.int32(x.shape[0]))
    return patchify(x, *args)
  monkeypatch.setattr(vit3d, 'patchify', counted)
  forward = lambda model: jax.jit(lambda p: task.loss(model, p, batch, None)['loss_sum'])
  jax.block_until_ready(forward(switch)(params))
  jax.effects_barrier()
  assert calls == [b, b]  # slots 0 and 1, a row each
  calls.clear()
  jax.block_until_ready(forward(one_call)(params))
  jax.effects_barrier()
  assert calls == [b * m]


def test_generation_through_the_slot_switch_equals_one_tower_call():
  """Prefill runs the tower with the decoder's cache mutable: the slot scan must carry it."""
  from radjax.eval.decoding import generate as generate_lib
  c = _radfm_like_config()
  cfg, rt = factory.vlm_config(c.model), factory.vlm_runtime(c)
  model = vlm.VLM(cfg, rt)
  tokens, real, padded, depth_mask = _vlm_batch(cfg.tokens_per_image, depth=4, pad_to=10)
  params = _perturb(jax.jit(model.init)(jax.random.key(0), tokens, real), scale=0.2)['params']
  gen_cfg = generate_lib.GenerationConfig(max_new_tokens=6, stop_ids=(2,), pad_id=0)
  images = {'images': padded, 'depth_mask': depth_mask}
  mask = jnp.ones(tokens.shape, bool)
  ids, scores = generate_lib.generate(model, params, tokens, mask, images, gen_cfg)
  one_call = vlm.VLM(cfg, dataclasses.replace(rt, volume_slot_switch=False))
  want_ids, want_scores = generate_lib.generate(one_call, params, tokens, mask, images, gen_cfg)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, atol=1e-4)


def test_vlm_born_sharded_on_eight_devices_equals_one_device():
  c = _radfm_like_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2
  model = vlm.VLM(factory.vlm_config(c.model), factory.vlm_runtime(c))
  tokens, _, images, depth_mask = _vlm_batch(4, depth=4, pad_to=6)
  init = lambda key: model.init(key, tokens, images, depth_mask=depth_mask)
  abstract = jax.eval_shape(init, jax.random.key(0))
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:8])
  rules = sharding.rules_from_config(c.sharding.rules)
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  params = sharding.born_sharded(init, shardings, mesh, rules, jax.random.key(0))
  p = nn.meta.unbox(params)['params']
  spec = lambda a: tuple(a.sharding.spec)
  vision, res = p['vision'], p['projector']
  assert spec(vision['patch_embed']['kernel']) == (None, 'fsdp')
  assert spec(vision['pos_depth']) == (None, 'fsdp')
  assert spec(vision['layers']['q']['kernel']) == (None, 'fsdp', 'tensor', None)
  assert spec(vision['layers']['fc1']['kernel']) == (None, 'fsdp', 'tensor')
  assert spec(res['latents']) == (None, 'fsdp')
  assert spec(res['layers']['k']['kernel']) == (None, 'fsdp', 'tensor', None)
  assert spec(res['fc']['kernel']) == (None, 'fsdp')
  # Each device holds a quarter of the fsdp axis; the sharded forward is the one-device one.
  shard = vision['patch_embed']['kernel'].addressable_shards[0].data
  assert shard.shape == (vision['patch_embed']['kernel'].shape[0], 48 // 4)
  with sharding.activation_rules(mesh, rules):
    logits, _ = jax.jit(model.apply)({'params': p}, tokens, images, depth_mask=depth_mask)
  single = jax.device_put(jax.device_get(p), jax.devices()[0])
  want, _ = jax.jit(model.apply)({'params': single}, tokens, images, depth_mask=depth_mask)
  np.testing.assert_allclose(jax.device_get(logits), want, atol=1e-4)


def test_a_depth_patch_with_any_real_slice_is_real():
  """Only a depth patch without a real slice is padding: a volume whose real depth ends
  inside a depth patch keeps that patch's tokens (and they see the rest)."""
  cfg, model = _tower()
  vols = _volumes(1, 6)
  params = _perturb(jax.jit(model.init)(jax.random.key(1), vols))
  mask = jnp.arange(6)[None] < 3  # slices 0-2: patch 0 real, patch 1 half real, patch 2 padding
  feats, aux = jax.jit(model.apply)(params, vols, mask)
  tokens = aux['token_mask'].reshape(2, 2, 3)
  assert bool(tokens[:, :, :2].all()) and not bool(tokens[:, :, 2].any())
  assert float(jnp.abs(feats.reshape(2, 2, 3, 24)[:, :, 1]).min()) > 0


@pytest.mark.parametrize('deepest, buckets', [(8, (2, 4, 8)), (2, (2, 4, 8)), (2, (4, 8))])
def test_the_model_resizes_in_plane_as_one_process_host_does(deepest, buckets):
  """config.data.volume_image_size on several processes: the host leaves volume batches
  whole, and the training model resizes every slot of a batch whose bucket is deeper than
  one depth patch, inside the program: the projected features of one process's host path
  (trim_depth, shrink_plane, then the tower), and the full-size ones for a shallow batch.
  The batch's bucket decides, not its deepest slot: 2 real slices in buckets (4, 8) are
  padded to 4, deeper than the patch, and resized (the micro recipe's buckets (16, 32) pad
  4-slice scans to 16)."""
  from radjax.data import volumes
  c = _radfm_like_config()
  cfg = factory.vlm_config(c.model)
  b, m, d, patch = 2, 3, 12, 2
  shrunk = min(x for x in buckets if x >= deepest) > patch
  real = np.array([[deepest, 1, 0], [2, 0, 0]])  # slot 2: nobody's
  depth_mask = np.arange(d)[None, None] < real[..., None]
  rng = np.random.default_rng(0)
  images = np.where(depth_mask[:, :, None, None, :, None],
                    rng.normal(size=(b, m, 16, 16, d, 2)), 0).astype(np.float32)
  rows = tuple(int(i) for i in volumes.nearest_indices(16, 8))
  rt = dataclasses.replace(factory.vlm_runtime(c), depth_buckets=buckets, volume_plane=rows)
  model, host_model = vlm.VLM(cfg, rt), vlm.VLM(cfg, factory.vlm_runtime(c))
  params = _perturb(model.init(jax.random.key(0), jnp.ones((b, 4), jnp.int32),
                               images[:, :1, ..., :4, :], depth_mask=depth_mask[:, :1, :4]),
                    scale=0.2)
  encode = lambda mdl, x, mask: jax.jit(functools.partial(  # noqa: E731
      mdl.apply, method=vlm.VLM.encode_images))(params, x, mask)
  got = encode(model, images, depth_mask)
  host = volumes.trim_depth({'images': images, 'depth_mask': depth_mask}, buckets, d)
  host = volumes.shrink_plane(host, 8, patch)
  assert host['images'].shape[2] == (8 if shrunk else 16)
  np.testing.assert_allclose(got, encode(host_model, host['images'], host['depth_mask']),
                             atol=2e-5)
  full = encode(host_model, images, depth_mask)
  assert (float(jnp.abs(got - full).max()) > 1e-3) == shrunk
