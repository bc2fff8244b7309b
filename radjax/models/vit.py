"""2D ViT vision towers, CLIP-style and SigLIP-style.

Parameter structure mirrors HF `CLIPVisionModel` / `SiglipVisionModel` one to one
(patch conv, class token for CLIP, learned positions, pre-norm for CLIP, q/k/v/o
with bias, fc1/fc2, post-norm), so conversion is transposes and reshapes.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers

TOKENS = ('act_batch', 'act_len', 'act_embed')


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  variant: str  # 'clip' | 'siglip'
  image_size: int
  patch_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_channels: int = 3
  norm_eps: float = 1e-5
  # Which hidden state feeds the projector, HF `hidden_states` indexing: -1 is the
  # last layer's output, -2 the penultimate (LLaVA's choice). Layers after it are
  # kept as parameters (for export) but never run.
  select_layer: int = -1
  keep_class_token: bool = False  # CLIP only: LLaVA's 'default' strategy drops it
  dtype: Any = jnp.bfloat16
  attention_impl: Optional[str] = None
  remat_policy: str = 'none'
  scan_layers: bool = True

  def __post_init__(self):
    if self.variant not in ('clip', 'siglip'):
      raise ValueError(f"config.model.vision.variant: {self.variant!r} is not 'clip' or 'siglip'")
    if self.image_size % self.patch_size:
      raise ValueError(f'config.model.vision: image_size {self.image_size} is not a multiple '
                       f'of patch_size {self.patch_size}')
    if not -self.num_layers - 1 <= self.select_layer < self.num_layers + 1:
      raise ValueError(f'config.model.vision.select_layer={self.select_layer} is outside '
                       f'the {self.num_layers} layers')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self) -> int:
    """Feature tokens handed to the projector per image."""
    return self.num_patches + int(self.variant == 'clip' and self.keep_class_token)

  @property
  def layers_run(self) -> int:
    s = self.select_layer
    return self.num_layers + 1 + s if s < 0 else s


class EncoderBlock(nn.Module):
  cfg: ViTConfig

  @nn.compact
  def __call__(self, x, _):
    cfg = self.cfg
    hd = cfg.embed_dim // cfg.num_heads
    x = layers.constrain(x, TOKENS)
    h = layers.LayerNorm(cfg.norm_eps, cfg.dtype, name='norm1')(x)
    q = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, cfg.dtype, name='q')(h)
    k = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, cfg.dtype, name='k')(h)
    v = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, cfg.dtype, name='v')(h)
    h = layers.attention(q, k, v, implementation=cfg.attention_impl)
    x = x + layers.DenseOut(cfg.embed_dim, ('heads', 'kv', 'embed'), 2, True, cfg.dtype,
                            name='o')(h)
    h = layers.LayerNorm(cfg.norm_eps, cfg.dtype, name='norm2')(x)
    h = layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), True, cfg.dtype, name='fc1')(h)
    act = 'quick_gelu' if cfg.variant == 'clip' else 'gelu_tanh'
    h = layers.constrain(layers.ACTIVATIONS[act](h), ('act_batch', 'act_len', 'act_mlp'))
    x = x + layers.DenseOut(cfg.embed_dim, ('mlp', 'embed'), 1, True, cfg.dtype, name='fc2')(h)
    return layers.constrain(x, TOKENS), None


def _run_stack(cfg: ViTConfig, x, count: int, name: str, remat: bool):
  """Runs `count` encoder blocks, scanned or unrolled; parameter names follow `name`."""
  if count == 0:
    return x
  block = layers.stack_layers(EncoderBlock, num_layers=count,
                              remat_policy=cfg.remat_policy if remat else 'none',
                              scan=cfg.scan_layers)
  if cfg.scan_layers:
    x, _ = block(cfg, name=name)(x, None)
    return x
  for i in range(count):
    x, _ = block(cfg, name=f'{name}_{i}')(x, None)
  return x


class ViT(nn.Module):
  """images [N, H, W, C] (already normalised) -> (features [N, tokens, E], aux)."""
  cfg: ViTConfig

  @nn.compact
  def __call__(self, images):
    cfg = self.cfg
    x = nn.Conv(cfg.embed_dim, (cfg.patch_size, cfg.patch_size),
                strides=(cfg.patch_size, cfg.patch_size), padding='VALID',
                use_bias=cfg.variant == 'siglip', dtype=cfg.dtype, param_dtype=jnp.float32,
                kernel_init=layers.param_init(nn.initializers.lecun_normal(),
                                              (None, None, None, 'embed')),
                bias_init=layers.param_init(nn.initializers.zeros, ('embed',)),
                name='patch_embed')(images.astype(cfg.dtype))
    x = x.reshape(x.shape[0], -1, cfg.embed_dim)
    if cfg.variant == 'clip':
      cls = self.param('class_embed', layers.param_init(layers.default_init, ('embed',)),
                       (cfg.embed_dim,), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.embed_dim)),
                           x], axis=1)
    pos = self.param('pos_embed', layers.param_init(layers.default_init, (None, 'embed')),
                     (x.shape[1], cfg.embed_dim), jnp.float32)
    x = layers.constrain(x + pos.astype(x.dtype)[None], TOKENS)
    if cfg.variant == 'clip':
      x = layers.LayerNorm(cfg.norm_eps, cfg.dtype, name='pre_norm')(x)

    x = _run_stack(cfg, x, cfg.layers_run, 'layers', remat=True)
    aux = {}
    unused = cfg.num_layers - cfg.layers_run
    if unused:
      # Layers past the selected one exist for a faithful export but never run.
      if self.is_initializing():
        _run_stack(cfg, x, unused, 'layers_unused', remat=False)
        layers.LayerNorm(cfg.norm_eps, cfg.dtype, name='post_norm')(x)
    else:
      post = layers.LayerNorm(cfg.norm_eps, cfg.dtype, name='post_norm')
      aux['pooled'] = post(x[:, 0]) if cfg.variant == 'clip' else post(x)
    aux['hidden'] = x
    if cfg.variant == 'clip' and not cfg.keep_class_token:
      x = x[:, 1:]
    return x, aux
