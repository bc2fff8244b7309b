"""3D ViT vision tower for volumes and 2D images alike (RadFM's `vit_3d.ViT`).

Layout: a volume is [H, W, D, C] (RadFM's [C, H, W, D] with channels last), a batch
[N, H, W, D, C]. A 2D image [H, W, C] (batch [N, H, W, C]) is repeated to one depth
patch, [H, W, depth_patch_size, C], as RadFM's nearest resize from depth 1 does, so it
gives H/p * W/p tokens through the same weights (the data path repeats it to its sample's
depth, radjax/data/volumes.py).

Depth varies up to `max_depth`: a batch pads its volumes to a common depth D and says
which slices are real with `depth_mask` [N, D] (real slices first). A depth patch with
no real slice is padding: its tokens are left out of every attention's keys and come
out as zeros, with `aux['token_mask']` False, so real tokens do not depend on how much
padding follows them. 2D images may take a depth_mask [N, depth_patch_size] too: all
False marks an empty image slot (radjax/models/vlm.py skips those).

Tokens are ordered (h, w, d), depth fastest, and each patch's pixels (ph, pw, pd, c),
the order of RadFM's Rearrange, so its patch Linear loads without a permutation.
Positions are three learned tables (rows, columns, depth slots), each embed_dim / 3
wide, concatenated, sized for image_size x image_size x max_depth.

RadFM's tower (imported by radjax/convert/radfm.py) has tables for 512 x 512 x 512 (16,
16, 128 rows) and stretches them, so it loads as image_size 512, max_depth 512,
position_stride True. RadFM's dropout (0.1) is not modelled; inference is unaffected.
"""
import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

TOKENS = ('act_batch', 'act_len', 'act_embed')


@dataclasses.dataclass(frozen=True)
class ViT3DConfig:
  image_size: int  # largest height/width; the row/column tables hold image_size / patch_size
  patch_size: int  # in height and width (RadFM 32)
  embed_dim: int  # a multiple of 3: rows, columns and depth get a third of it each
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_depth: int = 64  # largest depth in slices; the depth table holds max_depth / depth_patch_size
  depth_patch_size: int = 4
  head_dim: Optional[int] = None  # default embed_dim // num_heads (RadFM: 8 heads of 64 on 768)
  num_channels: int = 3
  norm_eps: float = 1e-5
  # False: depth slot k reads row k of the depth table, whatever the volume's depth.
  # True: RadFM's stretch, slot k of a volume n patches deep reads row (k+1)*(G//n)-1 of a
  # G-row table (likewise rows and columns for smaller images); n is counted per image
  # from the depth mask, so padding does not move it.
  position_stride: bool = False
  kind: ClassVar[str] = 'vit3d'

  def __post_init__(self):
    for name in ('image_size', 'patch_size', 'max_depth', 'depth_patch_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.model.vision.{name}={getattr(self, name)} must be >= 1')
    if self.image_size % self.patch_size:
      raise ValueError(f'config.model.vision: image_size {self.image_size} is not a multiple '
                       f'of patch_size {self.patch_size}')
    if self.max_depth % self.depth_patch_size:
      raise ValueError(f'config.model.vision: max_depth {self.max_depth} is not a multiple of '
                       f'depth_patch_size {self.depth_patch_size}')
    if self.embed_dim % 3:
      raise ValueError(f'config.model.vision.embed_dim={self.embed_dim}: vit3d splits it into '
                       'three position tables, so it must be a multiple of 3')
    if self.head_dim is not None and self.head_dim < 0:  # else a reshape error at init
      raise ValueError(f'config.model.vision.head_dim={self.head_dim} must be >= 0 (0: '
                       'embed_dim // num_heads)')
    if not self.head_dim and self.embed_dim % self.num_heads:
      raise ValueError(f'config.model.vision: embed_dim {self.embed_dim} is not a multiple of '
                       f'num_heads {self.num_heads}; set head_dim')

  @property
  def grid(self) -> tuple[int, int, int]:
    """Position table rows: (rows, columns, depth slots)."""
    side = self.image_size // self.patch_size
    return side, side, self.max_depth // self.depth_patch_size

  @property
  def num_tokens(self) -> int:
    """Feature tokens per image at image_size and max_depth (a shallower batch gives
    fewer; a resampling projector hands on the same number either way)."""
    rows, cols, depth = self.grid
    return rows * cols * depth

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.embed_dim // self.num_heads


class EncoderBlock(nn.Module):
  """Pre-norm block: x + o(attention(norm1 x)); x + fc2(gelu(fc1(norm2 x)))."""
  cfg: ViT3DConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, _, mask):
    cfg, dtype = self.cfg, self.rt.dtype
    heads, hd = cfg.num_heads, cfg.dim_per_head
    x = layers.constrain(x, TOKENS)
    h = layers.LayerNorm(cfg.norm_eps, dtype, name='norm1')(x)
    # RadFM's to_qkv has no bias; its to_out does.
    q = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='q')(h)
    k = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='k')(h)
    v = layers.Dense((heads, hd), ('embed', 'heads', 'kv'), False, dtype, name='v')(h)
    h = layers.attention(q, k, v, mask=mask, implementation=self.rt.attention_impl)
    x = x + layers.DenseOut(cfg.embed_dim, ('heads', 'kv', 'embed'), 2, True, dtype, name='o')(h)
    h = layers.LayerNorm(cfg.norm_eps, dtype, name='norm2')(x)
    h = layers.Dense((cfg.mlp_dim,), ('embed', 'mlp'), True, dtype, name='fc1')(h)
    h = layers.constrain(layers.ACTIVATIONS['gelu'](h), ('act_batch', 'act_len', 'act_mlp'))
    x = x + layers.DenseOut(cfg.embed_dim, ('mlp', 'embed'), 1, True, dtype, name='fc2')(h)
    return layers.constrain(x, TOKENS), None


def as_volumes(images, depth_patch_size: int):
  """[N, H, W, C] 2D images -> [N, H, W, depth_patch_size, C]; volumes pass through."""
  if images.ndim == 4:
    return jnp.repeat(images[:, :, :, None], depth_patch_size, axis=3)
  if images.ndim != 5:
    raise ValueError(f'vit3d: images must be [N, H, W, C] or [N, H, W, D, C], got shape '
                     f'{images.shape}')
  return images


def patchify(volumes, patch: int, depth_patch: int):
  """[N, H, W, D, C] -> [N, (h w d), (ph pw pd c)], RadFM's token and pixel order."""
  n, h, w, d, c = volumes.shape
  x = volumes.reshape(n, h // patch, patch, w // patch, patch, d // depth_patch, depth_patch, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(n, (h // patch) * (w // patch) * (d // depth_patch), -1)


def position_rows(grid, table, patch_mask, stride: bool):
  """Rows of the (row, column, depth) position tables that a (h, w, d) token grid reads:
  ([h], [w], [N, d]). `table` is the tables' sizes; `patch_mask` [N, d] marks real depth
  patches (real first). Stretched (RadFM), a position i of n reads row (i+1)*(G//n)-1 of
  a G-row table, n being for depth each image's real patch count."""
  (h, w, d), n = grid, patch_mask.shape[0]
  if not stride:
    return jnp.arange(h), jnp.arange(w), jnp.broadcast_to(jnp.arange(d), (n, d))
  real = jnp.maximum(patch_mask.sum(-1), 1)[:, None]
  depth = jnp.minimum((jnp.arange(d)[None] + 1) * (table[2] // real) - 1, table[2] - 1)
  return ((jnp.arange(h) + 1) * (table[0] // h) - 1, (jnp.arange(w) + 1) * (table[1] // w) - 1,
          depth)


class ViT3D(nn.Module):
  """images [N, H, W, D, C] or [N, H, W, C], depth_mask [N, D] (True: real slice) ->
  (features [N, h*w*d, E], aux with 'token_mask' [N, h*w*d])."""
  cfg: ViT3DConfig
  rt: Runtime = Runtime()

  def _check(self, shape):
    cfg = self.cfg
    _, h, w, d, c = shape
    if h % cfg.patch_size or w % cfg.patch_size or h > cfg.image_size or w > cfg.image_size:
      raise ValueError(f'vit3d: image height/width {h}x{w} must be multiples of patch_size '
                       f'{cfg.patch_size} and at most image_size {cfg.image_size}')
    if d % cfg.depth_patch_size or d > cfg.max_depth:
      raise ValueError(f'vit3d: depth {d} must be a multiple of depth_patch_size '
                       f'{cfg.depth_patch_size} and at most max_depth {cfg.max_depth}')
    if c != cfg.num_channels:
      raise ValueError(f'vit3d: images have {c} channels, config.model.vision.num_channels '
                       f'is {cfg.num_channels}')

  def _positions(self, grid, patch_mask):
    """[N, h*w*d, E] learned positions for a (h, w, d) grid of tokens."""
    cfg = self.cfg
    third = cfg.embed_dim // 3
    h, w, d = grid
    tables = [self.param(f'pos_{name}', layers.param_init(layers.default_init, (None, 'embed')),
                         (size, third), jnp.float32)
              for name, size in zip(('row', 'col', 'depth'), cfg.grid)]
    rows, cols, depth = tables
    n = patch_mask.shape[0]
    i, j, k = position_rows(grid, cfg.grid, patch_mask, cfg.position_stride)
    r, c, dep = rows[i], cols[j], depth[k]  # [h, third], [w, third], [N, d, third]
    pos = jnp.concatenate([
        jnp.broadcast_to(r[None, :, None, None], (n, h, w, d, third)),
        jnp.broadcast_to(c[None, None, :, None], (n, h, w, d, third)),
        jnp.broadcast_to(dep[:, None, None], (n, h, w, d, third))], axis=-1)
    return pos.reshape(n, h * w * d, cfg.embed_dim)

  def _encoder(self, x, mask):
    cfg, rt = self.cfg, self.rt
    block = layers.stack_layers(EncoderBlock, num_layers=cfg.num_layers,
                                remat_policy=rt.remat_policy, scan=rt.scan_layers,
                                in_axes=(nn.broadcast,))
    if rt.scan_layers:
      return block(cfg, rt, name='layers')(x, None, mask)[0]
    for i in range(cfg.num_layers):
      x, _ = block(cfg, rt, name=f'layers_{i}')(x, None, mask)
    return x

  @nn.compact
  def __call__(self, images, depth_mask=None):
    cfg, dtype = self.cfg, self.rt.dtype
    volumes = as_volumes(images, cfg.depth_patch_size)
    self._check(volumes.shape)
    n, h, w, d, _ = volumes.shape
    grid = (h // cfg.patch_size, w // cfg.patch_size, d // cfg.depth_patch_size)
    if depth_mask is None:
      depth_mask = jnp.ones((n, d), bool)
    elif depth_mask.shape != (n, d):  # a 2D image's is one depth patch deep
      raise ValueError(f'vit3d: depth_mask shape {depth_mask.shape} does not match '
                       f'the images [N, D] = {(n, d)}')
    patch_mask = depth_mask.reshape(n, grid[2], cfg.depth_patch_size).any(-1)
    token_mask = jnp.broadcast_to(patch_mask[:, None, None], (n, *grid)).reshape(n, -1)

    x = patchify(volumes.astype(dtype), cfg.patch_size, cfg.depth_patch_size)
    x = layers.LayerNorm(cfg.norm_eps, dtype, name='patch_norm')(x)
    x = layers.Dense((cfg.embed_dim,), (None, 'embed'), True, dtype, name='patch_embed')(x)
    x = layers.LayerNorm(cfg.norm_eps, dtype, name='embed_norm')(x)
    x = x + self._positions(grid, patch_mask).astype(x.dtype)
    x = layers.constrain(x, TOKENS)
    attn_mask = token_mask[:, None, None, :]  # keys only: [N, 1, 1, T]
    x = self._encoder(x, attn_mask)
    x = jnp.where(token_mask[..., None], x, 0).astype(x.dtype)
    return x, {'token_mask': token_mask}
