"""The VQ-GAN image codec (Taming Transformers' VQModel, as in LLM-CXR): encoder ->
vector quantizer -> decoder, plus the PatchGAN discriminator it trains against.

Layout NHWC. Parameter names follow diffusers' `VQModel` (`encoder/down_blocks_0/
resnets_1/conv1/kernel` is `encoder.down_blocks.0.resnets.1.conv1.weight`), so the
conversion (radjax/convert/vqgan.py) is a rename plus transposes. A level's blocks
are `(Attn)DownEncoderBlock2D` / `(Attn)UpDecoderBlock2D`: residual blocks (GroupNorm +
swish), single-head attention after each one on the levels in `attn_levels` and in
the middle block, a stride-2 conv after every level but the last (nearest-neighbour
upsampling + conv on the way up).

The quantizer keeps, next to its codebook, statistics the train step writes (never
given gradients): `ema_count`/`ema_sum` for EMA codebook updates and `usage`, the
running share of assignments per code (dead-code restarts, metrics). `to-hf` leaves
them out.

Sharding: a conv kernel [kh, kw, in, out] names its input channels 'embed' (FSDP, as a
Dense layer's input axis) and leaves its output channels unnamed; tensor-splitting them
would split the activations, which in a conv net dwarf the weights (256 px, 128 channels:
8M values per image against 147K per kernel), and GroupNorm's groups with them. A conv
reading the image (1 or 3 channels) names its output channels instead. The codebook
[K, D] is ('vocab', 'embed'), as an LLM's embedding table. Biases and norms stay
replicated (small).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

# Statistics of the quantizer that are state, not weights (see the module docstring).
CODEBOOK_STATS = ('ema_count', 'ema_sum', 'usage')


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  kind: str  # 'vqgan'
  num_channels: int = 3  # image channels in and out (1: grayscale)
  image_size: int = 256  # training / export size (the codec itself is fully convolutional)
  base_channels: int = 128  # width of level 0 is base_channels * channel_mult[0]
  channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # one per level; downsample factor 2^(L-1)
  num_res_blocks: int = 2  # per encoder level (the decoder has one more, as Taming)
  attn_levels: tuple[int, ...] = (4,)  # levels with attention (Taming's attn_resolutions)
  z_channels: int = 256  # encoder output / decoder input width
  codebook_size: int = 1024
  codebook_dim: int = 256
  norm_groups: int = 32
  # Codes compared by cosine (both sides l2-normalised); diffusers has no such lookup.
  l2_normalize: bool = False
  disc_channels: int = 64  # PatchGAN: first conv width (doubled per layer, capped at 8x)
  disc_layers: int = 3  # PatchGAN: stride-2 conv layers

  def __post_init__(self):
    if self.kind != 'vqgan':
      raise ValueError(f"config.model.vqgan.kind: {self.kind!r} is not 'vqgan'")
    widths = self.block_channels + (self.z_channels,)
    bad = [w for w in self.block_channels if w % self.norm_groups]
    if bad:
      raise ValueError(f'config.model.vqgan: channels {bad} (base_channels x channel_mult) '
                       f'are not divisible by norm_groups={self.norm_groups}')
    if min(widths) < 1 or not self.channel_mult:
      raise ValueError('config.model.vqgan: channel_mult and z_channels must be positive')
    levels = len(self.channel_mult)
    if self.image_size % self.downsample:
      raise ValueError(f'config.model.vqgan.image_size={self.image_size} is not divisible by '
                       f'the downsampling factor {self.downsample} (2^(levels-1))')
    if any(not 0 <= i < levels for i in self.attn_levels):
      raise ValueError(f'config.model.vqgan.attn_levels={self.attn_levels}: levels are '
                       f'0..{levels - 1}')
    widths = [self.disc_channels * min(2 ** n, 8) for n in range(1, self.disc_layers + 1)]
    bad = [w for w in widths if w % min(32, w)]
    if bad:  # PatchDiscriminator's GroupNorm(min(32, width))
      raise ValueError(f'config.model.vqgan.disc_channels={self.disc_channels}: the '
                       f'discriminator widths {bad} are not divisible into 32 norm groups; '
                       'use a multiple of 16 (the default is 64)')

  def check_discriminator(self) -> None:
    """For training (an imported codec's image_size is only nominal): the PatchGAN's
    output at image_size must keep a patch."""
    side = self.image_size  # PatchDiscriminator's 4x4 convs, padding 1
    for n in range(self.disc_layers + 2):
      side = (side - 2) // (2 if n < self.disc_layers else 1) + 1
    if side < 1:
      raise ValueError(f'config.model.vqgan.disc_layers={self.disc_layers}: at image_size '
                       f'{self.image_size} the discriminator has no output left (its loss is '
                       'NaN from vqgan.disc_start on); use fewer layers')

  @property
  def block_channels(self) -> tuple[int, ...]:
    return tuple(self.base_channels * m for m in self.channel_mult)

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  @property
  def code_grid(self) -> tuple[int, int]:
    """Codes per image side at image_size (LLM-CXR: 256 px / 16 = 16 x 16)."""
    side = self.image_size // self.downsample
    return side, side


def conv2d(x, kernel, bias, stride: int = 1, padding='SAME'):
  """NHWC conv with an HWIO kernel; a pure function so the train step can re-apply the
  decoder's last conv alone (the adaptive GAN weight)."""
  y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), padding,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + bias.astype(x.dtype)


# Logical axes of a conv kernel [kh, kw, in, out] (see the module docstring).
CONV_AXES = (None, None, 'embed', None)
IMAGE_CONV_AXES = (None, None, None, 'embed')  # the input is the image: 1 or 3 channels


class Conv(nn.Module):
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: object = 'SAME'
  dtype: layers.Dtype = jnp.float32
  axes: tuple = CONV_AXES

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
    kernel = self.param('kernel', layers.param_init(init, self.axes),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', layers.param_init(nn.initializers.zeros, (None,)),
                      (self.features,), jnp.float32)
    return conv2d(x.astype(self.dtype), kernel, bias, self.stride, self.padding)


class GroupNorm(nn.Module):
  """GroupNorm (eps 1e-6 as Taming and diffusers), statistics in f32."""
  groups: int
  eps: float = 1e-6
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param('scale', layers.param_init(nn.initializers.ones, ('norm',)), (c,),
                       jnp.float32)
    bias = self.param('bias', layers.param_init(nn.initializers.zeros, ('norm',)), (c,),
                      jnp.float32)
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], self.groups, c // self.groups)
    mean = jnp.mean(x32, axis=(-4, -3, -1), keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=(-4, -3, -1), keepdims=True)
    y = ((x32 - mean) * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


class ResBlock(nn.Module):
  features: int
  groups: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = jax.nn.silu(GroupNorm(self.groups, dtype=self.dtype, name='norm1')(x))
    h = Conv(self.features, dtype=self.dtype, name='conv1')(h)
    h = jax.nn.silu(GroupNorm(self.groups, dtype=self.dtype, name='norm2')(h))
    h = Conv(self.features, dtype=self.dtype, name='conv2')(h)
    if x.shape[-1] != self.features:
      x = Conv(self.features, 1, dtype=self.dtype, name='conv_shortcut')(x)
    return x + h


class SpatialAttention(nn.Module):
  """Single-head self-attention over all positions, with a residual."""
  groups: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, hgt, wid, c = x.shape
    h = GroupNorm(self.groups, dtype=self.dtype, name='group_norm')(x).reshape(n, hgt * wid, c)
    dense = lambda name: layers.Dense((c,), ('embed', None), True, self.dtype, name=name)
    q, k, v = dense('to_q')(h), dense('to_k')(h), dense('to_v')(h)
    logits = jnp.einsum('nqc,nkc->nqk', q, k).astype(jnp.float32) / jnp.sqrt(c)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = dense('to_out_0')(jnp.einsum('nqk,nkc->nqc', weights, v))
    return x + out.reshape(x.shape)


def _remat(block_cls, policy: str):
  """`block_cls` rematerialised by `policy` (config.runtime.remat.vqgan; layers.py
  REMAT_POLICIES, checked by factory.runtime): its activations are recomputed in the
  backward pass, not stored."""
  return block_cls if policy == 'none' else nn.remat(block_cls,
                                                     policy=layers.REMAT_POLICIES[policy])


class MidBlock(nn.Module):
  groups: int
  dtype: layers.Dtype = jnp.float32
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    res, attn = _remat(ResBlock, self.remat_policy), _remat(SpatialAttention, self.remat_policy)
    x = res(c, self.groups, self.dtype, name='resnets_0')(x)
    x = attn(self.groups, self.dtype, name='attentions_0')(x)
    return res(c, self.groups, self.dtype, name='resnets_1')(x)


class Level(nn.Module):
  """One resolution: residual blocks (each followed by attention when `attention`),
  then a stride-2 conv ('down') or 2x nearest upsampling + conv ('up'), or nothing."""
  features: int
  num_blocks: int
  groups: int
  attention: bool
  resample: str  # 'down' | 'up' | ''
  dtype: layers.Dtype = jnp.float32
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x):
    res, attn = _remat(ResBlock, self.remat_policy), _remat(SpatialAttention, self.remat_policy)
    for i in range(self.num_blocks):
      x = res(self.features, self.groups, self.dtype, name=f'resnets_{i}')(x)
      if self.attention:
        x = attn(self.groups, self.dtype, name=f'attentions_{i}')(x)
    if self.resample == 'down':  # pad right/bottom by one, then a valid stride-2 conv
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
      x = Conv(self.features, 3, 2, 'VALID', self.dtype, name='downsamplers_0_conv')(x)
    elif self.resample == 'up':
      n, h, w, c = x.shape
      x = jax.image.resize(x, (n, 2 * h, 2 * w, c), 'nearest')
      x = Conv(self.features, dtype=self.dtype, name='upsamplers_0_conv')(x)
    return layers.constrain(x, ('act_batch', None, None, None))


class Encoder(nn.Module):
  cfg: VQGANConfig
  dtype: layers.Dtype = jnp.float32
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x):
    cfg, chans = self.cfg, self.cfg.block_channels
    x = Conv(chans[0], dtype=self.dtype, axes=IMAGE_CONV_AXES, name='conv_in')(x)
    for i, c in enumerate(chans):
      x = Level(c, cfg.num_res_blocks, cfg.norm_groups, i in cfg.attn_levels,
                'down' if i < len(chans) - 1 else '', self.dtype, self.remat_policy,
                name=f'down_blocks_{i}')(x)
    x = MidBlock(cfg.norm_groups, self.dtype, self.remat_policy, name='mid_block')(x)
    x = jax.nn.silu(GroupNorm(cfg.norm_groups, dtype=self.dtype, name='conv_norm_out')(x))
    return Conv(cfg.z_channels, dtype=self.dtype, name='conv_out')(x)


class Decoder(nn.Module):
  """Returns (image, features before the last conv): the adaptive GAN weight needs
  the gradient at `conv_out` alone."""
  cfg: VQGANConfig
  dtype: layers.Dtype = jnp.float32
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, z):
    cfg, chans = self.cfg, self.cfg.block_channels
    levels = len(chans)
    x = Conv(chans[-1], dtype=self.dtype, name='conv_in')(z)
    x = MidBlock(cfg.norm_groups, self.dtype, self.remat_policy, name='mid_block')(x)
    for j in range(levels):  # up_blocks_0 is the lowest resolution
      level = levels - 1 - j
      x = Level(chans[level], cfg.num_res_blocks + 1, cfg.norm_groups, level in cfg.attn_levels,
                'up' if j < levels - 1 else '', self.dtype, self.remat_policy,
                name=f'up_blocks_{j}')(x)
    h = jax.nn.silu(GroupNorm(cfg.norm_groups, dtype=self.dtype, name='conv_norm_out')(x))
    return Conv(cfg.num_channels, dtype=self.dtype, name='conv_out')(h), h


def _normalize(x):
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), -1, keepdims=True), 1e-12))


def nearest_codes(z, codebook, l2_normalize: bool = False):
  """Index of the nearest codebook row for every vector of z [..., D] (f32 distances)."""
  z, e = z.astype(jnp.float32), codebook.astype(jnp.float32)
  if l2_normalize:
    z, e = _normalize(z), _normalize(e)
  dist = (jnp.sum(jnp.square(z), -1, keepdims=True) - 2.0 * jnp.einsum('...d,kd->...k', z, e)
          + jnp.sum(jnp.square(e), -1))
  return jnp.argmin(dist, axis=-1).astype(jnp.int32)


class Quantizer(nn.Module):
  """Nearest-code lookup with the straight-through estimator. Returns (z_q, codes, aux):
  aux 'codebook_loss' = |sg(z) - e|^2 and 'commit_loss' = |z - sg(e)|^2 per position
  (the task weighs them), and the flat inputs / codes for EMA and restarts."""
  cfg: VQGANConfig

  @nn.compact
  def __call__(self, z):
    cfg = self.cfg
    k, d = cfg.codebook_size, cfg.codebook_dim
    init = nn.initializers.uniform(2.0 / k)  # diffusers: U(-1/K, 1/K)
    axes = ('vocab', 'embed')
    codebook = self.param('embedding', layers.param_init(
        lambda key, shape, dtype: init(key, shape, dtype) - 1.0 / k, axes), (k, d),
        jnp.float32)
    stat = lambda name, fn, shape: jax.lax.stop_gradient(
        self.param(name, layers.param_init(fn, axes[:len(shape)]), shape, jnp.float32))
    stat('ema_count', nn.initializers.ones, (k,))
    stat('ema_sum', lambda key, shape, dtype: codebook, (k, d))
    stat('usage', nn.initializers.constant(1.0 / k), (k,))
    z = z.astype(jnp.float32)
    codes = nearest_codes(z, codebook, cfg.l2_normalize)
    e = jnp.asarray(codebook)[codes]
    zn = z
    if cfg.l2_normalize:
      zn, e = _normalize(z), _normalize(e)
    sg = jax.lax.stop_gradient
    aux = {'codebook_loss': jnp.mean(jnp.square(sg(zn) - e), -1),
           'commit_loss': jnp.mean(jnp.square(zn - sg(e)), -1), 'z': z}
    return zn + sg(e - zn), codes, aux


class PatchDiscriminator(nn.Module):
  """PatchGAN (pix2pix / Taming NLayerDiscriminator): 4x4 convs, LeakyReLU 0.2, one
  logit per patch. GroupNorm stands in for BatchNorm (no batch statistics to carry)."""
  cfg: VQGANConfig
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    pad = ((1, 1), (1, 1))
    act = lambda y: jax.nn.leaky_relu(y, 0.2)
    x = act(Conv(cfg.disc_channels, 4, 2, pad, self.dtype, IMAGE_CONV_AXES, name='conv_0')(x))
    for n in range(1, cfg.disc_layers + 1):
      width = cfg.disc_channels * min(2 ** n, 8)
      stride = 2 if n < cfg.disc_layers else 1
      x = Conv(width, 4, stride, pad, self.dtype, name=f'conv_{n}')(x)
      x = act(GroupNorm(min(32, width), 1e-5, self.dtype, name=f'norm_{n}')(x))
    return Conv(1, 4, 1, pad, self.dtype, name='conv_out')(x)[..., 0]


class VQGAN(nn.Module):
  """The codec and its discriminator under one parameter tree: encoder, quant_conv,
  quantize, post_quant_conv, decoder (what diffusers' VQModel holds) and discriminator."""
  cfg: VQGANConfig
  rt: Runtime = Runtime()

  def setup(self):
    cfg, dtype = self.cfg, self.rt.dtype
    self.encoder = Encoder(cfg, dtype, self.rt.remat_policy)
    self.quant_conv = Conv(cfg.codebook_dim, 1, dtype=dtype)
    self.quantize = Quantizer(cfg)
    self.post_quant_conv = Conv(cfg.z_channels, 1, dtype=dtype)
    self.decoder = Decoder(cfg, dtype, self.rt.remat_policy)
    self.discriminator = PatchDiscriminator(cfg, dtype)

  def encode(self, x):
    """Images [N, H, W, C] in [-1, 1] -> pre-quantization latents [N, h, w, codebook_dim]."""
    return self.quant_conv(self.encoder(layers.constrain(x, ('act_batch', None, None, None))))

  def decode(self, z_q):
    """Quantized latents -> (images, features before the decoder's last conv)."""
    return self.decoder(self.post_quant_conv(z_q))

  def codes(self, x):
    """Images -> code ids [N, h, w] (row-major: LLM-CXR's 16x16 = 256 tokens)."""
    return self.quantize(self.encode(x))[1]

  def decode_codes(self, codes):
    """Code ids [N, h, w] -> images [N, H, W, C] (unclipped)."""
    e = jnp.asarray(nn.meta.unbox(self.quantize.variables['params']['embedding']))[codes]
    if self.cfg.l2_normalize:
      e = _normalize(e)
    return self.decode(e.astype(self.rt.dtype))[0]

  def discriminate(self, x):
    return self.discriminator(x)

  def __call__(self, x):
    """(reconstruction, aux: codes, z, codebook/commit losses, pre_out features)."""
    z_q, codes, aux = self.quantize(self.encode(x))
    recon, pre_out = self.decode(z_q.astype(self.rt.dtype))
    if self.is_initializing():
      self.discriminate(x)  # creates its parameters
    return recon, {**aux, 'codes': codes, 'pre_out': pre_out}
