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

Causal self-attention is split into query blocks, each reading only the keys up to its
last query. The scores it skips are all masked: a quarter of them with 2 blocks, 3/8
with 4, 7/16 with 8 (flash attention saves the same by skipping masked tiles).
"""
import functools

import jax
import jax.numpy as jnp

# Causal self-attention of at least 2 x this many queries is split into blocks of at
# least this many (smaller blocks make smaller, less efficient matmuls), and into at most
# MAX_CAUSAL_BLOCKS (more would skip little and lengthen the program). Measured on CPU
# (BENCHMARKS.md, session 17): the demo's 176 tokens in 4 blocks of 44 took 5-9 % less
# step time than in one; at 512 tokens, 8 blocks of 64 equal 4 of 128, and 16 of 32 are
# slower.
MIN_CAUSAL_BLOCK = 40
MAX_CAUSAL_BLOCKS = 16


def attention(q, k, v, *, mask=None, is_causal=False):
  """q: [B, T, H, D], k/v: [B, S, K, D] (H a multiple of K); mask: bool, True = attend,
  [B, 1|H, T, S] or broadcastable to it along B and T (a keys-only [B, 1, 1, S]).
  Returns [B, T, H, D], the same as jax.nn.dot_product_attention."""
  b, t, h, d = q.shape
  s_len, kv_heads = k.shape[1], k.shape[2]
  g = h // kv_heads
  q5 = q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  if mask is not None:  # [B|1, 1|H, T|1, S] -> [B|1, 1|K, 1|G, T|1, S], as scores split
    mb, mh, mt, ms = mask.shape
    mask = mask.reshape(mb, 1, 1, mt, ms) if mh == 1 else mask.reshape(mb, kv_heads, g, mt, ms)
  blocks = causal_blocks(t, s_len) if is_causal and mask is None else 1
  size = t // blocks
  outs = []
  # Split, not sliced: dQ is then one concatenation of the blocks' pieces, where slices
  # made it a sum of zero-padded full-size arrays (2-4 % of the demo's step).
  for i, q_block in enumerate(jnp.split(q5, blocks, axis=3)):
    keys = s_len if blocks == 1 else (i + 1) * size  # a block sees no later key
    qg = q_block.reshape(b, kv_heads, g * size, d)
    out = _attend(qg, kt[:, :, :keys], vt[:, :, :keys], mask,
                  (float(d) ** -0.5, is_causal, g, i * size))
    outs.append(out.reshape(b, kv_heads, g, size, d))
  out = outs[0] if blocks == 1 else jnp.concatenate(outs, axis=3)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def causal_blocks(t: int, s_len: int) -> int:
  """How many query blocks causal self-attention over t queries is split into."""
  if t != s_len or t < 2 * MIN_CAUSAL_BLOCK:
    return 1
  blocks = 2
  while (t % (2 * blocks) == 0 and t // (2 * blocks) >= MIN_CAUSAL_BLOCK
         and 2 * blocks <= MAX_CAUSAL_BLOCKS):
    blocks *= 2
  return blocks if t % blocks == 0 else 1


def _probs(qg, kt, mask, static):
  scale, is_causal, g, q_offset = static
  b, kv_heads, gt, _ = qg.shape
  s_len = kt.shape[2]
  s = jnp.einsum('bkqd,bksd->bkqs', qg, kt, preferred_element_type=jnp.float32) * scale
  low = jnp.finfo(jnp.float32).min
  if is_causal:  # row r is query position q_offset + r % T (a 5D view measured slower)
    query = q_offset + jnp.arange(gt)[:, None] % (gt // g)
    s = jnp.where(query >= jnp.arange(s_len)[None, :], s, low)
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
