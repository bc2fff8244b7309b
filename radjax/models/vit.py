"""2D ViT vision towers: CLIP-style, SigLIP-style and EVA-style (BLIP-2, XrayGPT).

Parameter structure mirrors HF `CLIPVisionModel` / `SiglipVisionModel` /
`Blip2VisionModel` (patch conv, class token for CLIP and EVA, learned positions,
pre-norm for CLIP, q/k/v/o, fc1/fc2, post-norm), so conversion is transposes,
reshapes and, for EVA's fused qkv, a split.

EVA differs from CLIP in: no k bias, exact-erf GELU, a patch-conv bias, no pre-norm,
and the post-norm (BLIP-2's `ln_vision`) applied to every feature token handed on.
"""
import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

TOKENS = ('act_batch', 'act_len', 'act_embed')
VARIANTS = ('clip', 'siglip', 'eva')
_ACTIVATION = {'clip': 'quick_gelu', 'siglip': 'gelu_tanh', 'eva': 'gelu'}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  variant: str  # 'clip' | 'siglip' | 'eva'
  image_size: int
  patch_size: int
  embed_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  num_channels: int = 3
  norm_eps: float = 1e-5
  # Which hidden state feeds the projector, HF `hidden_states` indexing: -1 is the
  # last layer's output, -2 the penultimate (LLaVA's choice). A forward-time choice:
  # every layer stays in the parameters (and the export); those after it never run.
  select_layer: int = -1
  # CLIP and EVA: LLaVA's 'default' strategy drops it; BLIP-2's Q-Former sees it (EVA).
  keep_class_token: bool = False
  kind: ClassVar[str] = 'vit'

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'config.model.vision.variant: {self.variant!r} is not one of '
                       f'{VARIANTS}')
    # A remainder is allowed and dropped, as HF's stride-`patch` VALID convolution drops
    # it: SigLIP so400m/14 at 384 px sees 27 x 27 patches (RadVLM's tower).
    if self.image_size < self.patch_size:
      raise ValueError(f'config.model.vision: image_size {self.image_size} is smaller than '
                       f'patch_size {self.patch_size}')
    if self.num_heads < 1 or self.embed_dim % self.num_heads:
      raise ValueError(f'config.model.vision: embed_dim {self.embed_dim} is not a multiple '
                       f'of num_heads {self.num_heads}')
    if not -self.num_layers - 1 <= self.select_layer < self.num_layers + 1:
      raise ValueError(f'config.model.vision.select_layer={self.select_layer} is outside '
                       f'the {self.num_layers} layers')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def has_class_token(self) -> bool:
    return self.variant in ('clip', 'eva')

  @property
  def num_tokens(self) -> int:
    """Feature tokens handed to the projector per image."""
    return self.num_patches + int(self.has_class_token and self.keep_class_token)

  @property
  def layers_run(self) -> int:
    s = self.select_layer
    return self.num_layers + 1 + s if s < 0 else s


class EncoderBlock(nn.Module):
  cfg: ViTConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, _):
    cfg, dtype = self.cfg, self.rt.dtype
    hd = cfg.embed_dim // cfg.num_heads
    x = layers.constrain(x, TOKENS)
    h = layers.LayerNorm(cfg.norm_eps, dtype, name='norm1')(x)
    q = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, dtype, name='q')(h)
    # EVA has no k bias, and we leave it out rather than hold a frozen zero: a bias on
    # k adds q.b_k to every logit of a query's row, which softmax cancels, so it can never
    # matter (and would get only rounding-noise gradients).
    k = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), cfg.variant != 'eva',
                     dtype, name='k')(h)
    v = layers.Dense((cfg.num_heads, hd), ('embed', 'heads', 'kv'), True, dtype, name='v')(h)
    h = layers.attention(q, k, v, implementation=self.rt.attention_impl)
    x = x + layers.DenseOut(cfg.embed_dim, ('heads', 'kv', 'embed'), 2, True, dtype, name='o')(h)
    h = layers.LayerNorm(cfg.norm_eps, dtype, name='norm2')(x)
    h = layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), True, dtype, name='fc1')(h)
    h = layers.ACTIVATIONS[_ACTIVATION[cfg.variant]](h)
    h = layers.constrain(h, ('act_batch', 'act_len', 'act_mlp'))
    x = x + layers.DenseOut(cfg.embed_dim, ('mlp', 'embed'), 1, True, dtype, name='fc2')(h)
    return layers.constrain(x, TOKENS), None


class ViT(nn.Module):
  """images [N, H, W, C] (already normalised) -> (features [N, tokens, E], aux)."""
  cfg: ViTConfig
  rt: Runtime = Runtime()

  def _encoder(self, x):
    """Runs the first `layers_run` blocks. Parameters always hold all `num_layers`
    ('layers' stacked, or 'layers_{i}'), whatever `select_layer` is."""
    cfg, rt = self.cfg, self.rt
    total, run = cfg.num_layers, cfg.layers_run
    if self.is_initializing():
      run = total  # create every layer's parameters
    if not rt.scan_layers:
      block = layers.stack_layers(EncoderBlock, num_layers=1, remat_policy=rt.remat_policy,
                                  scan=False)
      for i in range(run):
        x, _ = block(cfg, rt, name=f'layers_{i}')(x, None)
      return x
    if run == 0:
      return x
    x, _ = layers.scanned_stack(self, EncoderBlock, (cfg, rt), num_layers=total,
                                remat_policy=rt.remat_policy, loop=rt.unroll_scan,
                                run=run)(x, None)
    return x

  @nn.compact
  def __call__(self, images):
    cfg, dtype = self.cfg, self.rt.dtype
    x = nn.Conv(cfg.embed_dim, (cfg.patch_size, cfg.patch_size),
                strides=(cfg.patch_size, cfg.patch_size), padding='VALID',
                use_bias=cfg.variant != 'clip', dtype=dtype, param_dtype=jnp.float32,
                kernel_init=layers.param_init(nn.initializers.lecun_normal(),
                                              (None, None, None, 'embed')),
                bias_init=layers.param_init(nn.initializers.zeros, ('embed',)),
                name='patch_embed')(images.astype(dtype))
    x = x.reshape(x.shape[0], -1, cfg.embed_dim)
    if cfg.has_class_token:
      cls = self.param('class_embed', layers.param_init(layers.default_init, ('embed',)),
                       (cfg.embed_dim,), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.embed_dim)),
                           x], axis=1)
    pos = self.param('pos_embed', layers.param_init(layers.default_init, (None, 'embed')),
                     (x.shape[1], cfg.embed_dim), jnp.float32)
    x = layers.constrain(x + pos.astype(x.dtype)[None], TOKENS)
    if cfg.variant == 'clip':
      x = layers.LayerNorm(cfg.norm_eps, dtype, name='pre_norm')(x)

    x = self._encoder(x)
    aux = {'hidden': x}
    post = layers.LayerNorm(cfg.norm_eps, dtype, name='post_norm')
    if cfg.variant == 'eva':
      # BLIP-2 normalises the selected layer's tokens (`ln_vision`) before the Q-Former.
      x = post(x)
      if cfg.layers_run == cfg.num_layers:  # HF's pooler_output norms the CLS token twice
        aux['pooled'] = post(x[:, 0])
    elif cfg.layers_run == cfg.num_layers:
      aux['pooled'] = post(x[:, 0]) if cfg.variant == 'clip' else post(x)
    elif self.is_initializing():
      post(x)  # exported with the tower, unused by a truncated forward
    if cfg.has_class_token and not cfg.keep_class_token:
      x = x[:, 1:]
    return x, aux
