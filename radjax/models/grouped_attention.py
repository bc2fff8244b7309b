"""Attention as plain XLA ops for CPU and TPU, laid out for their dot kernels.

Each KV head's G query heads are stacked along the query axis: q is [B, K, G*T, D], so
every product is one batched matmul over [B, K] with no group axis in the way. The
backward is written out (custom VJP). It recomputes the probabilities from q, k and v,
as flash attention does, and keeps no [T, S] array. It orders each product so that the
[G*T, S] matrices (probabilities, their gradient) are read in the layout they were
written in. Only [*, D] operands, 1/G the size or less, are transposed: with autodiff,
XLA:CPU copied a [B, K, G*T, S] array several times per layer.

The causal and padding masks are applied where the scores are computed, from iota and
the given mask, so no [B, K, G*T, S] mask is built.
"""
import functools

import jax
import jax.numpy as jnp


def attention(q, k, v, *, mask=None, is_causal=False):
  """q: [B, T, H, D], k/v: [B, S, K, D] (H a multiple of K); mask: bool, True = attend,
  [B, 1|H, T, S] or broadcastable to it along B and T (a keys-only [B, 1, 1, S]).
  Returns [B, T, H, D], the same as jax.nn.dot_product_attention."""
  b, t, h, d = q.shape
  kv_heads = k.shape[2]
  g = h // kv_heads
  qg = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if mask is not None:  # [B|1, 1|H, T|1, S] -> [B|1, 1|K, 1|G, T|1, S], as scores split
    mb, mh, mt, ms = mask.shape
    mask = mask.reshape(mb, 1, 1, mt, ms) if mh == 1 else mask.reshape(mb, kv_heads, g, mt, ms)
  out = _attend(qg, kt, vt, mask, (float(d) ** -0.5, is_causal, g))
  return out.reshape(b, kv_heads, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _probs(qg, kt, mask, static):
  scale, is_causal, g = static
  b, kv_heads, gt, _ = qg.shape
  s_len = kt.shape[2]
  s = jnp.einsum('bkqd,bksd->bkqs', qg, kt, preferred_element_type=jnp.float32) * scale
  low = jnp.finfo(jnp.float32).min
  if is_causal:  # row r is query position r % T (4D: a 5D view here measured slower)
    s = jnp.where(jnp.arange(gt)[:, None] % (gt // g) >= jnp.arange(s_len)[None, :], s, low)
  if mask is not None:
    s = jnp.where(mask, s.reshape(b, kv_heads, g, gt // g, s_len), low)
    s = s.reshape(b, kv_heads, gt, s_len)
  return jax.nn.softmax(s, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(qg, kt, vt, mask, static):
  return jnp.einsum('bkqs,bksd->bkqd', _probs(qg, kt, mask, static).astype(vt.dtype), vt)


def _attend_fwd(qg, kt, vt, mask, static):
  return _attend(qg, kt, vt, mask, static), (qg, kt, vt, mask)


def _attend_bwd(static, residuals, dout):
  qg, kt, vt, mask = residuals
  p = _probs(qg, kt, mask, static)
  dp = jnp.einsum('bkqd,bksd->bkqs', dout, vt, preferred_element_type=jnp.float32)
  # [D, S] products, transposed after: p and ds stay the right-hand operand as written.
  dvt = jnp.einsum('bkqd,bkqs->bkds', dout, p.astype(dout.dtype)).swapaxes(-1, -2)
  ds = (p * (dp - jnp.sum(dp * p, axis=-1, keepdims=True)) * static[0]).astype(qg.dtype)
  dq = jnp.einsum('bkqs,bksd->bkqd', ds, kt)
  dkt = jnp.einsum('bkqd,bkqs->bkds', qg, ds).swapaxes(-1, -2)
  return dq, dkt.astype(kt.dtype), dvt.astype(vt.dtype), None


_attend.defvjp(_attend_fwd, _attend_bwd)
