"""Building blocks shared by the vision towers and the decoders.

Every parameter carries logical axis names; activations are constrained with
logical names too. Which mesh axis a logical name lands on is decided by the
config's rules (radjax/core/sharding.py), never here.
"""
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from radjax.models import grouped_attention

Dtype = Any
default_init = nn.initializers.normal(stddev=0.02)


# The logical axes activations take (beside parameter axes such as 'embed'): what a
# config.sharding.rules entry may name besides the parameters' axes.
ACTIVATION_AXES = ('act_batch', 'act_len', 'act_embed', 'act_heads', 'act_kv', 'act_mlp',
                   'act_vocab')


def constrain(x, axes: Sequence[Optional[str]]):
  """Logical sharding constraint; a no-op outside a mesh/rules context."""
  unknown = [a for a in axes if a and a.startswith('act_') and a not in ACTIVATION_AXES]
  if unknown:
    raise ValueError(f'activation axis {unknown[0]!r} is not in layers.ACTIVATION_AXES')
  return nn.with_logical_constraint(x, tuple(axes))


def param_init(init: Callable, axes: Sequence[Optional[str]]):
  return nn.with_logical_partitioning(init, tuple(axes))


def _linear_forward(x, kernel, n_in: int):
  return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)),
                                          tuple(range(n_in))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear(x, kernel, n_in: int):
  """`x`'s trailing `n_in` axes against `kernel`'s leading ones: what a linear layer does.

  Autodiff's transpose of this dot asks for the kernel gradient as [out, in] and then
  transposes it, and XLA:CPU turns that into a copy of the whole output gradient (for the
  LM head, tokens x vocab) before the matmul; the backward below asks for [in, out]
  directly. Same math on every backend.
  """
  return _linear_forward(x, kernel, n_in)


def _linear_vjp_fwd(x, kernel, n_in):
  return _linear_forward(x, kernel, n_in), (x, kernel)


def _linear_vjp_bwd(n_in, res, g):
  x, kernel = res
  lead = x.ndim - n_in  # batch-like axes of x (and of g)
  dx = jax.lax.dot_general(g, kernel, ((tuple(range(lead, g.ndim)),
                                        tuple(range(n_in, kernel.ndim))), ((), ())))
  dk = jax.lax.dot_general(x, g, ((tuple(range(lead)), tuple(range(lead))), ((), ())))
  return dx.astype(x.dtype), dk.astype(kernel.dtype)


linear.defvjp(_linear_vjp_fwd, _linear_vjp_bwd)


class Dense(nn.Module):
  """`x @ kernel (+ bias)` over the last axis, kernel shape (in, *features)."""
  features: tuple[int, ...]
  axes: tuple[Optional[str], ...]  # logical names of the kernel, input axis first
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  kernel_init: Callable = default_init

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', param_init(self.kernel_init, self.axes),
                        (x.shape[-1], *self.features), jnp.float32)
    y = linear(x.astype(self.dtype), kernel.astype(self.dtype), 1)
    if self.use_bias:
      bias = self.param('bias', param_init(nn.initializers.zeros, self.axes[1:]),
                        self.features, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class DenseOut(nn.Module):
  """Contracts the trailing `len(kernel_shape) - 1` axes, e.g. heads and head_dim."""
  features: int
  axes: tuple[Optional[str], ...]
  contract: int = 2
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = (*x.shape[-self.contract:], self.features)
    kernel = self.param('kernel', param_init(default_init, self.axes), shape, jnp.float32)
    y = linear(x.astype(self.dtype), kernel.astype(self.dtype), self.contract)
    if self.use_bias:
      bias = self.param('bias', param_init(nn.initializers.zeros, self.axes[-1:]),
                        (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class RMSNorm(nn.Module):
  """LLaMA RMSNorm; statistics in f32, then the f32 scale, then cast back."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', param_init(nn.initializers.ones, ('norm',)),
                       (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * scale).astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with bias (CLIP, SigLIP, GPT-NeoX); computed in f32."""
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', param_init(nn.initializers.ones, ('norm',)),
                       (features,), jnp.float32)
    bias = self.param('bias', param_init(nn.initializers.zeros, ('norm',)),
                      (features,), jnp.float32)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (y * scale + bias).astype(self.dtype)


ACTIVATIONS = {
    'silu': jax.nn.silu,
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'quick_gelu': lambda x: x * jax.nn.sigmoid(1.702 * x),
}


def rope_tables(positions, theta: float, dim: int, num_positions: int):
  """[B, T] int positions -> (cos, sin), each [B, T, 1, dim] f32 (rotate-half layout), read
  from a [num_positions, dim] table. Built once per forward and shared by every layer: with
  cos and sin computed from the positions inside q's and k's fusions, XLA:CPU recomputed
  them for every head, forward and backward (3-5 % of the demo's CPU time). A position outside
  the table reads NaN (jnp.take's fill), so a wrong one cannot pass silently."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  angles = jnp.arange(num_positions, dtype=jnp.float32)[:, None] * inv_freq  # [P, dim/2]
  table = jnp.stack([jnp.cos(angles), jnp.sin(angles)])  # [2, P, dim/2]
  # Gathered before the halves are repeated: XLA fuses the table into the gather.
  half = jnp.take(table, positions, axis=1)[:, :, :, None]  # [2, B, T, 1, dim/2]
  cos_sin = jnp.concatenate([half, half], axis=-1)
  return cos_sin[0], cos_sin[1]


def rope(x, tables):
  """Rotate-half rotary embedding (the HF convention) on the first `dim` dims of x
  [B, T, H, D], with `tables` from rope_tables. Computed in f32."""
  cos, sin = tables
  dim = cos.shape[-1]
  x32 = x.astype(jnp.float32)
  rot, rest = x32[..., :dim], x32[..., dim:]
  half = dim // 2
  rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
  out = rot * cos + rotated * sin
  return jnp.concatenate([out, rest], axis=-1).astype(x.dtype)


def segment_mask(segment_ids):
  """[B, T] segment ids of packed rows (radjax/data/packing.py) -> [B, 1, T, T] bool: a
  query sees the keys at or before it in its own segment (causal and same-segment).
  Padding (segment 0) sees only padding, so no row of the mask is empty.

  jax.nn.dot_product_attention takes no segment ids, so the mask is explicit here (an
  O(T^2) bool per row, fine at our lengths). On a GPU the next step is cuDNN's packed
  path (segment / per-sequence offsets fused into flash attention), which skips the
  masked blocks instead of computing them.
  """
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  t = segment_ids.shape[1]
  causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
  return (same & causal[None])[:, None]


def attention(q, k, v, *, mask=None, is_causal=False, implementation=None):
  """q: [B, T, H, D], k/v: [B, S, K, D] (H a multiple of K: grouped-query attention).

  `implementation` is 'cudnn' (flash attention on GPU), 'xla' or None (JAX picks; on CPU
  and TPU that is XLA).
  An explicit `mask` ([B, 1|H, T, S], True = attend) is used for cached decoding and
  packed rows (segment_mask).
  """
  q = checkpoint_name(q, 'query')
  k = checkpoint_name(k, 'key')
  v = checkpoint_name(v, 'value')
  if mask is not None and implementation == 'cudnn':
    implementation = None  # cuDNN's masked path is narrower; let JAX choose
  xla = implementation == 'xla' or (implementation is None and jax.default_backend() != 'gpu')
  if xla and q.shape[1] > 1:
    # Plain XLA ops with a written-out backward that recomputes the probabilities
    # (grouped_attention.py): differentiated op by op, the backward kept every layer's
    # [T, S] probabilities and copied them between layouts (BENCHMARKS.md, issue 15).
    # A one-query decode step reads the KV cache where it lies instead.
    out = grouped_attention.attention(q, k, v, mask=mask, is_causal=is_causal)
  else:
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                       implementation=implementation)
  return checkpoint_name(out, 'attention_out')


REMAT_POLICIES = {
    'none': None,  # no rematerialisation
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'attention_out': jax.checkpoint_policies.save_only_these_names('attention_out'),
    'qkv_and_attention_out': jax.checkpoint_policies.save_only_these_names(
        'query', 'key', 'value', 'attention_out'),
}


def stack_layers(block_cls, *, num_layers: int, remat_policy: str, scan: bool,
                 in_axes: tuple = (), static_argnums: tuple = ()):
  """Wraps a block in remat (by policy name) and, if `scan`, in `nn.scan` over layers.

  The block's signature is `(carry, xs, *broadcast_args) -> (carry, ys)`.
  """
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'config: unknown remat_policy {remat_policy!r}; '
                     f'choose from {sorted(REMAT_POLICIES)}')
  if remat_policy != 'none':
    block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat_policy],
                         prevent_cse=not scan, static_argnums=static_argnums)
  if not scan:
    return block_cls
  return nn.scan(block_cls, variable_axes={'params': 0}, split_rngs={'params': True},
                 in_axes=(0, *in_axes), length=num_layers,
                 metadata_params={nn.PARTITION_NAME: 'layers'})


class _LayerLoop(nn.Module):
  """`num_layers` blocks applied in turn, as submodules 'layers_{i}'."""
  block_cls: Any
  block_args: tuple
  num_layers: int

  @nn.compact
  def __call__(self, carry, xs, *broadcast):
    for i in range(self.num_layers):
      x = None if xs is None else jax.tree.map(lambda a, i=i: a[i], xs)
      carry, _ = self.block_cls(*self.block_args, name=f'layers_{i}')(carry, x, *broadcast)
    return carry, None


def _unstack(variables, num_layers: int):
  """{collection: stacked tree [L, ...]} -> {collection: {'layers_{i}': tree}}. Split,
  not indexed: the gradient is then one concatenation, not a zero-filled stack per layer."""
  def per_layer(tree):
    parts = jax.tree.map(lambda a: [p[0] for p in jnp.split(a, num_layers)], tree)
    is_parts = lambda x: isinstance(x, list)
    return {f'layers_{i}': jax.tree.map(lambda ps, i=i: ps[i], parts, is_leaf=is_parts)
            for i in range(num_layers)}
  return {col: per_layer(tree) for col, tree in variables.items()}


def scanned_stack(module: nn.Module, block_cls, block_args: tuple, *, num_layers: int,
                  remat_policy: str, loop: bool, in_axes: tuple = (), name: str = 'layers',
                  run: Optional[int] = None):
  """`num_layers` blocks whose parameters are one stacked tree ([L, ...] leaves, what
  nn.scan makes and checkpoints hold), as a submodule of `module` called like a scanned
  stack: `(carry, xs, *broadcast) -> (carry, None)`. `run`: apply only the first `run`
  layers (all by default); the parameters hold all of them either way.

  `loop`: the same parameters, but the layers applied one by one from slices of them.
  XLA:CPU then skips the scan's stacked residual buffers (zero-filled, then written a
  layer at a time). Compile time then grows with depth, as for unrolled layers
  (BENCHMARKS.md, issue 15). Only without remat: XLA:CPU drops the optimization barriers
  that keep unrolled layers' recomputation apart, so looped remat layers keep their
  activations anyway (at BENCHMARKS.md's 49.5M remat shape, 'full' took the temporaries
  from 1.09 to 1.03 GiB looped, 1.16 to 0.31 GiB scanned) and pay for the recomputation;
  the scan's loop keeps them apart on every backend.
  """
  run = num_layers if run is None or module.is_initializing() else run
  loop = loop and remat_policy == 'none'
  if not loop or module.is_initializing():  # parameters are always made by the scan
    stack = stack_layers(block_cls, num_layers=run, remat_policy=remat_policy, scan=True,
                         in_axes=in_axes)
    if run < num_layers:  # the first `run` slices of the stacked parameters
      stack = nn.map_variables(stack, 'params', init=False,
                               trans_in_fn=lambda v: jax.tree.map(lambda a: a[:run], v))
    return stack(*block_args, name=name)
  block = stack_layers(block_cls, num_layers=run, remat_policy=remat_policy, scan=False)
  looped = nn.map_variables(_LayerLoop, 'params', init=False,
                            trans_in_fn=lambda v: _unstack(v, num_layers))
  return looped(block, block_args, run, name=name)
