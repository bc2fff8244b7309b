"""BLIP-2 Q-Former: learned queries that read image features by cross-attention.

`QFormer` is the reusable layer stack (BERT-style post-norm blocks: self-attention
over the queries, cross-attention to the image features every
`cross_attention_every` layers, then an MLP). `QFormerProjector` is XrayGPT's
projector: query tokens -> QFormer -> a linear to the LLM width. Parameters mirror
HF `Blip2QFormerModel` + `query_tokens` + `language_projection` one to one.
The layers alternate in shape, so they are always unrolled (`layers_{i}`).
"""
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

QUERIES = ('act_batch', 'act_len', 'act_embed')


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
  in_dim: int  # width of the image features it attends to
  out_dim: int  # width of the LLM it feeds
  num_queries: int = 32
  hidden_dim: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  cross_attention_every: int = 2  # layer i cross-attends when i % this == 0
  norm_eps: float = 1e-12
  kind: ClassVar[str] = 'qformer'

  def __post_init__(self):
    if self.hidden_dim % self.num_heads:
      raise ValueError(f'config.model.projector: hidden_dim={self.hidden_dim} is not a '
                       f'multiple of num_heads={self.num_heads}')
    if self.cross_attention_every < 1:
      raise ValueError('config.model.projector.cross_attention_every must be >= 1')

  def num_tokens(self, vision_tokens: int) -> int:
    del vision_tokens
    return self.num_queries

  def has_cross_attention(self, layer: int) -> bool:
    return layer % self.cross_attention_every == 0


class PostNormAttention(nn.Module):
  """LayerNorm(x + o(attention(q(x), k(kv), v(kv)))), as BERT and the Q-Former do."""
  cfg: QFormerConfig
  kv_axis: str
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, kv, mask=None):
    cfg, dtype = self.cfg, self.rt.dtype
    hd = cfg.hidden_dim // cfg.num_heads
    q = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, dtype, name='q')(x)
    k = layers.Dense((cfg.num_heads, hd), (self.kv_axis, 'heads', 'kv'), True, dtype,
                     name='k')(kv)
    v = layers.Dense((cfg.num_heads, hd), (self.kv_axis, 'heads', 'kv'), True, dtype,
                     name='v')(kv)
    if mask is not None:
      mask = mask[:, None, None, :].astype(bool)  # keys only: [B, 1, 1, N]
    h = layers.attention(q, k, v, mask=mask, implementation=self.rt.attention_impl)
    h = layers.DenseOut(cfg.hidden_dim, ('heads', 'kv', 'embed'), 2, True, dtype, name='o')(h)
    return layers.LayerNorm(cfg.norm_eps, dtype, name='norm')(x + h)


class QFormerLayer(nn.Module):
  cfg: QFormerConfig
  cross: bool
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, feats, mask=None):
    cfg, dtype = self.cfg, self.rt.dtype
    x = layers.constrain(x, QUERIES)
    x = PostNormAttention(cfg, 'embed', self.rt, name='self_attn')(x, x)
    if self.cross:
      x = PostNormAttention(cfg, 'vision_embed', self.rt, name='cross_attn')(x, feats, mask)
    h = layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), True, dtype, name='fc1')(x)
    h = layers.constrain(layers.ACTIVATIONS['gelu'](h), ('act_batch', 'act_len', 'act_mlp'))
    h = layers.DenseOut(cfg.hidden_dim, ('mlp', 'embed'), 1, True, dtype, name='fc2')(h)
    return layers.constrain(layers.LayerNorm(cfg.norm_eps, dtype, name='mlp_norm')(x + h),
                            QUERIES)


class QFormer(nn.Module):
  """queries [B, Q, H], feats [B, N, E], mask [B, N] (True: real) -> ([B, Q, H], aux)."""
  cfg: QFormerConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, queries, feats, mask=None):
    cfg = self.cfg
    x = layers.LayerNorm(cfg.norm_eps, self.rt.dtype, name='norm')(queries)
    block = layers.stack_layers(QFormerLayer, num_layers=1, remat_policy=self.rt.remat_policy,
                                scan=False, static_argnums=())
    for i in range(cfg.num_layers):
      x = block(cfg, cfg.has_cross_attention(i), self.rt, name=f'layers_{i}')(x, feats, mask)
    return x, {'queries': x}


class QFormerProjector(nn.Module):
  """Image features [N, T, E], mask [N, T] (True: real) -> [N, num_queries, out_dim]."""
  cfg: QFormerConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, feats, mask=None):
    cfg = self.cfg
    query = self.param('query_tokens', layers.param_init(layers.default_init, (None, 'embed')),
                       (cfg.num_queries, cfg.hidden_dim), jnp.float32)
    queries = jnp.broadcast_to(query.astype(self.rt.dtype),
                               (feats.shape[0], cfg.num_queries, cfg.hidden_dim))
    x, _ = QFormer(cfg, self.rt, name='qformer')(queries, feats.astype(self.rt.dtype), mask)
    return layers.Dense((cfg.out_dim,), (None, 'embed'), True, self.rt.dtype, name='out')(x)
