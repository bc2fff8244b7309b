"""On CPU (and TPU) attention runs as plain XLA ops; its backward must recompute the
[T, S] probabilities instead of keeping them (radjax/models/layers.attention)."""
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
  assert f'{T},{T}]' not in ours, ours
  # The op-by-op differentiation it replaces keeps [.., T, T] probabilities.
  plain = functools.partial(jax.nn.dot_product_attention, implementation='xla')
  jax.ad_checkpoint.print_saved_residuals(_loss(plain, None, True), *_qkv())
  assert f'{T},{T}]' in capsys.readouterr().out


@pytest.mark.parametrize('mask,is_causal', [(None, True), ('padding', True),
                                             ('padding', False)])
def test_recomputed_attention_has_the_plain_gradients(mask, is_causal):
  mask = _padding_mask() if mask else None
  plain = functools.partial(jax.nn.dot_product_attention, implementation='xla')
  want = jax.grad(_loss(plain, mask, is_causal), (0, 1, 2))(*_qkv())
  got = jax.jit(jax.grad(_loss(layers.attention, mask, is_causal), (0, 1, 2)))(*_qkv())
  for w, g in zip(want, got):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
