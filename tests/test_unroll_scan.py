"""runtime.unroll_scan: nn.scan's stacked parameters, the layers applied one by one
(layers.scanned_stack). Same parameters, same outputs and gradients as the scan."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from radjax.models import llm, vit
from radjax.models.runtime import Runtime

SCAN, LOOP = Runtime(scan_layers=True), Runtime(scan_layers=True, unroll_scan=True)


def _grads_agree(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5)


def test_decoder_loop_has_the_scan_parameters_outputs_gradients_and_cache():
  cfg = llm.LLMConfig(vocab_size=97, embed_dim=32, num_layers=3, num_heads=4, num_kv_heads=2,
                      mlp_dim=48)
  scan, loop = llm.Decoder(cfg, SCAN), llm.Decoder(cfg, LOOP)
  tokens = jax.random.randint(jax.random.key(0), (2, 20), 0, cfg.vocab_size)
  params = nn.meta.unbox(scan.init(jax.random.key(1), tokens, method=scan.logits))['params']
  made = nn.meta.unbox(loop.init(jax.random.key(1), tokens, method=loop.logits))['params']
  assert jax.tree.structure(made) == jax.tree.structure(params)  # one stacked 'layers'
  assert made['layers']['mlp']['up']['kernel'].shape[0] == 3
  _grads_agree(made, params)

  def loss(model):
    return lambda p: jnp.sum(model.apply({'params': p}, tokens, method=model.logits)[0] ** 2)
  want, want_g = jax.value_and_grad(loss(scan))(params)
  got, got_g = jax.jit(jax.value_and_grad(loss(loop)))(params)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _grads_agree(got_g, want_g)

  # The KV cache (every layer's slot written in the loop) gives the full forward's logits.
  b, t = tokens.shape
  pos = jnp.broadcast_to(jnp.arange(t), (b, t))
  full, _ = scan.apply({'params': params}, tokens, method=scan.logits)
  cache = llm.init_cache(cfg, b, t, jnp.float32)
  key_mask = jnp.ones((b, t), bool)
  logits, aux = loop.apply({'params': params}, tokens[:, :12], pos[:, :12], cache, 0, key_mask,
                           method=loop.decode_step)
  outs = [logits]
  for i in range(12, t):
    logits, aux = loop.apply({'params': params}, tokens[:, i:i + 1], pos[:, i:i + 1],
                             aux['cache'], i, key_mask, method=loop.decode_step)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=2e-5)


def test_vit_loop_runs_only_the_selected_layers():
  cfg = vit.ViTConfig(variant='clip', image_size=32, patch_size=8, embed_dim=32, num_heads=2,
                      mlp_dim=64, num_layers=3, select_layer=-2)
  scan, loop = vit.ViT(cfg, SCAN), vit.ViT(cfg, LOOP)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  params = nn.meta.unbox(jax.jit(scan.init)(jax.random.key(1), x))['params']
  feats = lambda model: lambda p: model.apply({'params': p}, x)[0]
  np.testing.assert_allclose(jax.jit(feats(loop))(params), feats(scan)(params), atol=1e-6)
  want = jax.grad(lambda p: feats(scan)(p).sum())(params)
  got = jax.jit(jax.grad(lambda p: feats(loop)(p).sum()))(params)
  _grads_agree(got, want)
  # The third layer does not run, so none of its slice gets a gradient.
  assert all(float(jnp.abs(g[2]).max()) == 0 for g in jax.tree.leaves(got['layers']))


def test_remat_under_unroll_scan_keeps_fewer_temporaries():
  # XLA:CPU drops the barriers that keep unrolled layers' recomputation apart, so remat
  # must run the scan: looped, 'full' kept 92 % of the temporaries of 'none' here.
  cfg = llm.LLMConfig(vocab_size=97, embed_dim=64, num_layers=4, num_heads=4, num_kv_heads=2,
                      mlp_dim=256)
  tokens = jax.random.randint(jax.random.key(0), (4, 128), 0, cfg.vocab_size)

  def temp_bytes(remat_policy):
    model = llm.Decoder(cfg, Runtime(unroll_scan=True, remat_policy=remat_policy))
    params = nn.meta.unbox(model.init(jax.random.key(1), tokens, method=model.logits))['params']
    loss = lambda p: jnp.sum(model.apply({'params': p}, tokens, method=model.logits)[0] ** 2)
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  none, full = temp_bytes('none'), temp_bytes('full')
  assert full < 0.75 * none, (full, none)
