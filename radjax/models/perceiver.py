"""Perceiver resampler (Flamingo; RadFM's `helpers.PerceiverResampler`) as a projector.

Learned latents read an image's feature tokens: each layer normalises the features and
the latents apart, lets the latents attend to [features; latents], adds the result, then
a pre-norm GELU MLP; a final LayerNorm, then `fc` to the LLM width (RadFM's fc, 768 ->
5120). Every image becomes `num_queries` tokens whatever its depth, so 2D images and
volumes of any depth take the same number of prompt slots.

Padded feature tokens (a volume's depth padding) are left out of the keys by `mask`, so
the latents do not depend on them. Linears inside the resampler have no bias, as in
Flamingo; RadFM's fused to_kv is held as separate k and v.

RadFM's checkpoint names map onto these in radjax/convert/radfm.py.
"""
import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

LATENTS = ('act_batch', 'act_len', 'act_embed')


@dataclasses.dataclass(frozen=True)
class PerceiverConfig:
  in_dim: int  # vision feature width; the resampler works at this width (RadFM 768)
  out_dim: int  # LLM embedding width (RadFM 5120)
  num_queries: int = 32  # learned latents = tokens per image
  num_layers: int = 6
  num_heads: int = 8
  head_dim: Optional[int] = 64
  mlp_dim: int = 3072  # RadFM: ff_mult 4 x 768
  norm_eps: float = 1e-5
  kind: ClassVar[str] = 'perceiver'

  def __post_init__(self):
    for name in ('num_queries', 'num_layers', 'num_heads', 'mlp_dim'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.model.projector.{name}={getattr(self, name)} must be >= 1')
    if self.head_dim is not None and self.head_dim < 0:  # else a reshape error at init
      raise ValueError(f'config.model.projector.head_dim={self.head_dim} must be >= 0 (0: '
                       'in_dim // num_heads)')
    if not self.head_dim and self.in_dim % self.num_heads:
      raise ValueError(f"config.model.projector: in_dim {self.in_dim} (the vision tower's "
                       f'embed_dim) is not a multiple of num_heads {self.num_heads}; set '
                       'config.model.projector.head_dim')

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.in_dim // self.num_heads

  def num_tokens(self, vision_tokens: int) -> int:
    del vision_tokens
    return self.num_queries


class PerceiverLayer(nn.Module):
  """latents + attn(norm(latents) -> [norm(feats); norm(latents)]), then + MLP."""
  cfg: PerceiverConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, latents, _, feats, mask):
    cfg, dtype = self.cfg, self.rt.dtype
    heads, hd = cfg.num_heads, cfg.dim_per_head
    latents = layers.constrain(latents, LATENTS)
    x = layers.LayerNorm(cfg.norm_eps, dtype, name='norm_media')(feats)
    lat = layers.LayerNorm(cfg.norm_eps, dtype, name='norm_latents')(latents)
    kv_in = jnp.concatenate([x, lat], axis=1)
    q = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='q')(lat)
    k = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='k')(kv_in)
    v = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='v')(kv_in)
    h = layers.attention(q, k, v, mask=mask, implementation=self.rt.attention_impl)
    latents = latents + layers.DenseOut(cfg.in_dim, ('heads', 'kv', 'embed'), 2, False, dtype,
                                        name='o')(h)
    h = layers.LayerNorm(cfg.norm_eps, dtype, name='mlp_norm')(latents)
    h = layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), False, dtype, name='fc1')(h)
    h = layers.constrain(layers.ACTIVATIONS['gelu'](h), ('act_batch', 'act_len', 'act_mlp'))
    latents = latents + layers.DenseOut(cfg.in_dim, ('mlp', 'embed'), 1, False, dtype,
                                        name='fc2')(h)
    return layers.constrain(latents, LATENTS), None


class PerceiverProjector(nn.Module):
  """feats [N, T, in_dim], mask [N, T] (True: real token) -> [N, num_queries, out_dim]."""
  cfg: PerceiverConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, feats, mask=None):
    cfg, rt = self.cfg, self.rt
    n, t = feats.shape[:2]
    latent = self.param('latents', layers.param_init(nn.initializers.normal(1.0),
                                                     (None, 'embed')),
                        (cfg.num_queries, cfg.in_dim), jnp.float32)
    latents = jnp.broadcast_to(latent.astype(rt.dtype), (n, cfg.num_queries, cfg.in_dim))
    keys = jnp.ones((n, t), bool) if mask is None else mask.astype(bool)
    keys = jnp.concatenate([keys, jnp.ones((n, cfg.num_queries), bool)], axis=1)
    attn_mask = keys[:, None, None, :]  # [N, 1, 1, T + Q]
    feats = feats.astype(rt.dtype)
    block = layers.stack_layers(PerceiverLayer, num_layers=cfg.num_layers,
                                remat_policy=rt.remat_policy, scan=rt.scan_layers,
                                in_axes=(nn.broadcast, nn.broadcast))
    if rt.scan_layers:
      latents, _ = block(cfg, rt, name='layers')(latents, None, feats, attn_mask)
    else:
      for i in range(cfg.num_layers):
        latents, _ = block(cfg, rt, name=f'layers_{i}')(latents, None, feats, attn_mask)
    latents = layers.LayerNorm(cfg.norm_eps, rt.dtype, name='norm')(latents)
    return layers.Dense((cfg.out_dim,), (None, 'embed'), True, rt.dtype, name='fc')(latents)
