"""On CPU (and TPU) attention runs as plain XLA ops (radjax/models/grouped_attention.py);
its backward must recompute the [T, S] probabilities instead of keeping them, and give
jax.nn.dot_product_attention's outputs and gradients."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radjax.models import layers

B, T, H, K, D = 2, 24, 4, 2, 8


def _qkv(seed=0):
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.normal(size=(B, T, H, D)), jnp.float32),
          jnp.asarray(r.normal(size=(B, T, K, D)), jnp.float32),
          jnp.asarray(r.normal(size=(B, T, K, D)), jnp.float32))


def _loss(attend, mask, is_causal):
  w = jnp.asarray(np.random.default_rng(9).normal(size=(B, T, H, D)), jnp.float32)
  return lambda q, k, v: jnp.sum(attend(q, k, v, mask=mask, is_causal=is_causal) * w)


def _padding_mask():
  keep = np.ones((B, 1, T, T), bool)
  keep[0, :, :, -5:] = False  # the first row's last 5 keys are padding
  return jnp.asarray(keep)


@pytest.mark.parametrize('impl', [None, 'xla'])
def test_attention_backward_keeps_no_score_sized_residual(impl, capsys):
  attend = functools.partial(layers.attention, implementation=impl)
  jax.ad_checkpoint.print_saved_residuals(_loss(attend, None, True), *_qkv())
  ours = capsys.readouterr().out
  assert f'{T},{T}]' not in ours and f'{H // K * T},{T}]' not in ours, ours
  # The op-by-op differentiation it replaces keeps [.., T, T] probabilities.
  plain = functools.partial(jax.nn.dot_product_attention, implementation='xla')
  jax.ad_checkpoint.print_saved_residuals(_loss(plain, None, True), *_qkv())
  assert f'{T},{T}]' in capsys.readouterr().out


def _per_head_mask():
  keep = np.random.default_rng(3).random((B, H, T, T)) < 0.7
  keep[..., 0] = True  # no query without a key
  return jnp.asarray(keep)


def _keys_only_mask():  # [B, 1, 1, S], as the 3D ViT's padded depth
  return jnp.asarray(np.arange(T)[None, None, None] < np.array([T, T - 7])[:, None, None, None])


@pytest.mark.parametrize('mask,is_causal', [(None, True), ('padding', True),
                                             ('padding', False), ('per_head', True),
                                             (None, False), ('keys_only', False)])
def test_recomputed_attention_has_the_plain_gradients(mask, is_causal):
  masks = {'padding': _padding_mask, 'per_head': _per_head_mask, 'keys_only': _keys_only_mask}
  mask = masks[mask]() if mask else None
  plain = functools.partial(jax.nn.dot_product_attention, implementation='xla')
  want = jax.grad(_loss(plain, mask, is_causal), (0, 1, 2))(*_qkv())
  got = jax.jit(jax.grad(_loss(layers.attention, mask, is_causal), (0, 1, 2)))(*_qkv())
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('heads,kv_heads,s_len', [(4, 4, 24), (4, 1, 24), (4, 2, 7)])
def test_head_groupings_and_key_lengths_match_the_plain_attention(heads, kv_heads, s_len):
  """Multi-head (a ViT's), multi-query and cross-attention (queries and keys of different
  lengths, as the Perceiver and Q-Former have): outputs and gradients."""
  r = np.random.default_rng(5)
  q = jnp.asarray(r.normal(size=(B, T, heads, D)), jnp.float32)
  k, v = (jnp.asarray(r.normal(size=(B, s_len, kv_heads, D)), jnp.float32) for _ in 'kv')
  w = jnp.asarray(r.normal(size=(B, T, heads, D)), jnp.float32)
  plain = functools.partial(jax.nn.dot_product_attention, implementation='xla')
  np.testing.assert_allclose(layers.attention(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-5)
  want = jax.grad(lambda *a: jnp.sum(plain(*a) * w), (0, 1, 2))(q, k, v)
  got = jax.grad(lambda *a: jnp.sum(layers.attention(*a) * w), (0, 1, 2))(q, k, v)
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_bfloat16_attention_keeps_its_dtypes_and_values():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  out = layers.attention(q, k, v, is_causal=True)
  want = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation='xla')
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(np.float32), want.astype(np.float32), atol=2e-2)
  grads = jax.grad(lambda *a: jnp.sum(layers.attention(*a, is_causal=True).astype(
      jnp.float32)), (0, 1, 2))(q, k, v)
  assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def test_causal_block_counts(monkeypatch):
  from radjax.models import grouped_attention
  monkeypatch.setattr(grouped_attention, 'MIN_CAUSAL_BLOCK', 4)
  counts = {t: grouped_attention.causal_blocks(t, t) for t in (7, 8, 17, 18, 20, 24, 64)}
  assert counts == {7: 1, 8: 2, 17: 1, 18: 2, 20: 4, 24: 4, 64: 16}
  assert grouped_attention.causal_blocks(24, 30) == 1  # keys beyond the queries: no skip
  monkeypatch.setattr(grouped_attention, 'MAX_CAUSAL_BLOCKS', 4)
  assert grouped_attention.causal_blocks(64, 64) == 4


def test_causal_block_counts_at_the_measured_lengths():
  """The demo's 176 tokens, the 43m bench's 512 and llava_tinyllama's 2048."""
  from radjax.models import grouped_attention
  counts = {t: grouped_attention.causal_blocks(t, t) for t in (48, 128, 176, 512, 2048)}
  assert counts == {48: 1, 128: 2, 176: 4, 512: 8, 2048: 16}


@pytest.mark.parametrize('t', [18, 24])
def test_causal_attention_in_query_blocks_has_the_plain_outputs_and_gradients(t, monkeypatch):
  """Blocks that skip the keys after their last query (2 blocks at 18, 4 at 24)."""
  from radjax.models import grouped_attention
  monkeypatch.setattr(grouped_attention, 'MIN_CAUSAL_BLOCK', 4)
  r = np.random.default_rng(7)
  q = jnp.asarray(r.normal(size=(B, t, H, D)), jnp.float32)
  k, v = (jnp.asarray(r.normal(size=(B, t, K, D)), jnp.float32) for _ in 'kv')
  w = jnp.asarray(r.normal(size=(B, t, H, D)), jnp.float32)
  plain = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation='xla')
  ours = functools.partial(layers.attention, is_causal=True)
  np.testing.assert_allclose(ours(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-5)
  want = jax.grad(lambda *a: jnp.sum(plain(*a) * w), (0, 1, 2))(q, k, v)
  got = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * w), (0, 1, 2)))(q, k, v)
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
