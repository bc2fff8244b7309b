"""Vision-language model: encode images -> project -> splice at placeholders -> LLM.

The three parts are chosen by kind (radjax/models/registry.py). Shapes are static:
every example carries `max_images` image slots (a mask says which are real) and the
prompt holds `tokens_per_image` placeholder tokens per real image, in order. The k-th
placeholder of a row takes that row's k-th image feature vector, so interleaved
multi-image prompts need nothing extra.

AnyRes (config.model.anyres_grids, radjax/data/anyres.py): each image slot holds its tile
slots [K, H, W, C] and a plan of up to N tokens, each a weighted sum of 4 of its projected
tile features or the projector's image_newline; an image gets as many placeholders as its
plan has tokens, so the k-th placeholder is found through the images' token counts.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from radjax.models import classifier, registry
from radjax.models import llm as llm_lib
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class VLMConfig:
  vision: Any  # a vision kind's config
  projector: Any  # a projector kind's config
  llm: llm_lib.LLMConfig
  image_token_id: int
  num_labels: int = 0  # > 0: a label head on the tower (an auxiliary loss; not exported)
  # AnyRes: the (rows, cols) grids of tiles an image may be fit to (() = one tile), and
  # anyres_max_N's N (0: a grid's map is never scaled down).
  anyres_grids: tuple = ()
  anyres_max_tiles: int = 0

  @property
  def tokens_per_image(self) -> int:
    """Placeholders per image (with AnyRes, the base tile's: its images' plans say more)."""
    return self.projector.num_tokens(self.vision.num_tokens)


@dataclasses.dataclass(frozen=True)
class VLMRuntime:
  vision: Runtime = Runtime()
  projector: Runtime = Runtime()
  llm: Runtime = Runtime()
  # Volume slots (depth_mask given, for 2D images too; config.runtime.volume_slot_switch):
  # the tower runs slot by slot, not at all where no row has an image in the slot, each at
  # the smallest of depth_buckets (and the batch's own depth) holding the slot's deepest
  # volume in the whole batch (_volume_slots). The buckets are given on several processes
  # only: one process trims its batches on the host (factory.vlm_runtime).
  volume_slot_switch: bool = True
  depth_buckets: tuple = ()
  # Training on several processes (config.data.volume_image_size; one process resizes on
  # the host): a volume batch whose bucket is deeper than one depth patch runs every slot
  # resized in-plane to these source rows and columns (nearest voxel; (): off).
  volume_plane: tuple = ()
  # Compact volume slots (a dict, radjax/data/pixels.py) -> the tower's float32 volumes:
  # the data layer's function, given by the task. With it the images may come compact and
  # each slot is expanded inside the slot scan, so that only one slot's floats are live.
  volume_floats: Any = None


def splice(text_embeds, image_features, tokens, image_token_id, counts=None):
  """Overwrites placeholder positions with image features, in order.

  text_embeds [B, T, E]; image_features [B, M*N, E]; tokens [B, T]; counts [B, M]: the
  images' own token counts (each <= N) when they differ (AnyRes), else all N are used.
  """
  is_image = tokens == image_token_id
  index = jnp.cumsum(is_image, axis=1) - 1  # the placeholder's place in the row
  if counts is not None:  # -> its image m and place j in it: feature m * N + j
    ends = jnp.cumsum(counts, axis=1)
    image = jnp.minimum(jnp.sum(ends[:, None, :] <= index[..., None], -1), counts.shape[1] - 1)
    start = jnp.take_along_axis(ends - counts, image, axis=1)
    index = image * (image_features.shape[1] // counts.shape[1]) + index - start
  index = jnp.clip(index, 0, image_features.shape[1] - 1)
  gathered = jnp.take_along_axis(image_features, index[..., None], axis=1)
  return jnp.where(is_image[..., None], gathered.astype(text_embeds.dtype), text_embeds)


def _shape(images) -> tuple:
  """[B, M, H, W, ...] of image slots given as floats or compactly (a dict whose 'images'
  holds the 2D slots' 8-bit planes [B, M, H, W, P])."""
  return (images['images'] if isinstance(images, dict) else images).shape


def _maybe_frozen(x, rt: Runtime):
  return jax.lax.stop_gradient(x) if rt.frozen else x


class VLM(nn.Module):
  cfg: VLMConfig
  rt: VLMRuntime = VLMRuntime()

  def setup(self):
    self.vision = registry.module('vision', self.cfg.vision, self.rt.vision)
    self.projector = registry.module('projector', self.cfg.projector, self.rt.projector)
    self.llm = registry.module('llm', self.cfg.llm, self.rt.llm)
    if self.cfg.num_labels:
      self.label_head = classifier.LabelHead(self.cfg.num_labels, self.rt.vision)

  def _floats(self, images, depth_mask, rows=()):
    """Slots as floats or compact (a dict, rt.volume_floats) -> the tower's floats; with
    `rows` (one slot, [B, H, W, ...]) resized in-plane to those rows and columns (nearest
    voxel, as the host resizes; compact slots before their floats are built)."""
    if isinstance(images, dict):
      return self.rt.volume_floats({**images, 'depth_mask': depth_mask}, rows)
    if rows:
      images = jnp.take(jnp.take(images, jnp.asarray(rows), axis=1), jnp.asarray(rows), axis=2)
    return images

  def _tower(self, images, depth_mask=None):
    """images [B, M, ...] (or compact volume slots, VLMRuntime.volume_floats) -> tower
    features [B * M, T, D] and their token mask."""
    b, m = _shape(images)[:2]
    if (depth_mask is not None and self.rt.volume_slot_switch and not self.is_initializing()
        and (m > 1 or any(d < depth_mask.shape[-1] for d in self.rt.depth_buckets)
             or 0 < len(self.rt.volume_plane) < _shape(images)[2])):
      feats, token_mask = self._volume_slots(images, depth_mask)
      return _maybe_frozen(feats, self.rt.vision), token_mask
    images = self._floats(images, depth_mask)
    flat = images.reshape(b * m, *images.shape[2:])
    if depth_mask is None:
      feats, aux = self.vision(flat)
    else:
      feats, aux = self.vision(flat, depth_mask.reshape(b * m, *depth_mask.shape[2:]))
    return _maybe_frozen(feats, self.rt.vision), aux.get('token_mask')

  def _volume_slots(self, images, depth_mask):
    """The tower over volume slots one slot at a time (a scan), each slot at a depth chosen
    inside the program from the whole batch's depth mask: the smallest of
    rt.depth_buckets that holds its deepest volume, or none at all for a slot no row uses
    (RadFM's recipe pads every example to 10 slots). Features of the depth not run are
    zeros with token_mask False, as vit3d gives padding. Chosen in the program, the depth
    is the global batch's on any number of processes. 2D images [B, M, H, W, C] come with
    a mask one depth patch deep (each slot runs whole or not at all). With
    rt.volume_plane, a batch whose deepest volume's bucket is deeper than one depth patch
    runs every slot at that in-plane size (as one process's host resizes it,
    radjax/data/volumes.py shrink_plane), its tokens padded to the full size's, masked.
    Compact slots are expanded to floats one slot at a time, in the branch that runs it.
    -> ([B * M, T, D], [B * M, T])."""
    (b, m, h, w), depth = _shape(images)[:4], depth_mask.shape[-1]
    cfg, dtype = self.cfg.vision, self.rt.vision.dtype
    patch = cfg.depth_patch_size
    depths = sorted({d for d in self.rt.depth_buckets if d < depth} | {depth})
    grid = (h // cfg.patch_size) * (w // cfg.patch_size)
    plane = self.rt.volume_plane if 0 < len(self.rt.volume_plane) < h else ()

    def run_at(d, rows=()):
      def branch(mdl, x, mask):
        x = mdl._floats(x, mask, rows)
        feats, aux = mdl.vision(x if d == depth else x[..., :d, :], mask[:, :d])
        g = (len(rows) // cfg.patch_size) ** 2 if rows else grid
        pad = lambda a: jnp.pad(a.reshape(b, g, d // patch, *a.shape[2:]),
                                [(0, 0), (0, grid - g), (0, (depth - d) // patch)]
                                + [(0, 0)] * (a.ndim - 2)).reshape(b, -1, *a.shape[2:])
        return pad(feats), pad(aux['token_mask'])
      return branch

    def empty(mdl, x, mask):
      del mdl, x, mask
      tokens = grid * (depth // patch)
      return jnp.zeros((b, tokens, cfg.embed_dim), dtype), jnp.zeros((b, tokens), bool)

    def bucket(deepest):  # the index in `depths` of the smallest holding `deepest`
      return jnp.searchsorted(jnp.asarray(depths), deepest, side='left')

    branches = [empty] + [run_at(d) for d in depths]
    shrink = False
    if plane:  # the whole batch's bucket, as the host's trim_depth picks it
      shrink = jnp.asarray(depths)[bucket(jnp.max(jnp.sum(depth_mask, axis=-1)))] > patch
      branches += [run_at(d, plane) for d in depths]

    def slot(mdl, carry, x, mask):
      deepest = jnp.max(jnp.sum(mask, axis=-1))  # real slices come first
      index = jnp.where(deepest > 0, 1 + bucket(deepest) + shrink * len(depths), 0)
      out = nn.switch(index, branches, mdl, x, mask)
      return carry, out

    # Each slot rematerialised whole: a switch's backward keeps the residuals of every
    # branch (the others' zero-filled) and, inside a scan, a copy of the parameters per
    # slot; kept only for the slot being differentiated, they cost one more forward.
    scan = nn.scan(nn.remat(slot), variable_broadcast='params', split_rngs={'params': False},
                   in_axes=1, out_axes=1)
    _, (feats, token_mask) = scan(self, None, images, depth_mask)
    return (feats.reshape(b * m, *feats.shape[2:]),
            token_mask.reshape(b * m, token_mask.shape[-1]))

  def _project(self, feats, token_mask, b: int):
    feats = self.projector(feats) if token_mask is None else self.projector(feats, token_mask)
    feats = _maybe_frozen(feats, self.rt.projector)
    return feats.reshape(b, -1, feats.shape[-1])

  def encode_images(self, images, depth_mask=None):
    """images [B, M, H, W, C] (2D) or [B, M, H, W, D, C] (volumes, for a 3D tower);
    depth_mask [B, M, D] (True: a real slice; None: all real; with 2D images D is the depth
    patch and all False an empty slot, which the slot switch skips) -> projected features
    [B, M * tokens, E_llm]. A tower that pads (vit3d) returns `token_mask` in its aux
    and the projector leaves those tokens out."""
    return self._project(*self._tower(images, depth_mask), _shape(images)[0])

  def encode_tiles(self, images, tile_index, tile_weight):
    """AnyRes: images [B, M, K, H, W, C]; tile_index / tile_weight [B, M, N, 4] (module
    doc) -> (features [B, M * N, E_llm], token counts [B, M])."""
    b, m, k = images.shape[:3]
    feats = self.encode_images(images.reshape(b, m * k, *images.shape[3:]))
    feats = feats.reshape(b, m, -1, feats.shape[-1])
    newline = self.projector.image_newline
    if newline is None:
      raise ValueError("AnyRes tiles need the projector's image_newline (a VLMConfig with "
                       'anyres_grids gives it one)')
    newline = _maybe_frozen(newline, self.rt.projector)  # it is the projector's
    newline = jnp.broadcast_to(newline.astype(feats.dtype), (b, m, 1, feats.shape[-1]))
    table = jnp.concatenate([feats, newline], axis=2)
    # The taps are weighed and summed in f32 and rounded once, as torch's bilinear
    # interpolate does in bf16: bf16 weights and sums put ~1/5 of the values off HF's.
    out = 0
    for tap in range(tile_index.shape[-1]):  # one gather per tap: no [.., 4, E] copy
      picked = jnp.take_along_axis(table, tile_index[..., tap, None], axis=2)
      out = out + tile_weight[..., tap, None].astype(jnp.float32) * picked.astype(jnp.float32)
    counts = jnp.sum(jnp.any(tile_weight != 0, axis=-1), axis=-1)
    return out.astype(feats.dtype).reshape(b, -1, feats.shape[-1]), counts

  def embed(self, tokens, images, depth_mask=None, tile_index=None, tile_weight=None):
    text = self.llm.embed(tokens)
    if tile_index is not None:
      feats, counts = self.encode_tiles(images, tile_index, tile_weight)
      return splice(text, feats, tokens, self.cfg.image_token_id, counts)
    return splice(text, self.encode_images(images, depth_mask), tokens,
                  self.cfg.image_token_id)

  def with_labels(self, tokens, images, depth_mask=None, logits_at=None):
    """(logits [B, T, V], (label logits [B, L], token scores [B, T_img, L]) of each
    example's first image): the forward pass of training with the auxiliary label loss,
    the tower run once."""
    b, m = _shape(images)[:2]
    feats, token_mask = self._tower(images, depth_mask)
    first = lambda x: None if x is None else x.reshape(b, m, *x.shape[1:])[:, 0]
    label_logits, _, scores = self.label_head(first(feats), first(token_mask))
    embeds = splice(self.llm.embed(tokens), self._project(feats, token_mask, b), tokens,
                    self.cfg.image_token_id)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _ = self.llm(embeds, positions, logits_at=logits_at)
    return logits, (label_logits, scores)

  def __call__(self, tokens, images, positions=None, cache=None, cache_index=0,
               key_mask=None, depth_mask=None, segment_ids=None, logits_at=None,
               tile_index=None, tile_weight=None):
    """tokens [B, T]; images [B, M, H, W, C] or [B, M, H, W, D, C] with depth_mask
    [B, M, D], or AnyRes tiles [B, M, K, H, W, C] with their tile_index / tile_weight
    [B, M, N, 4]; volumes may come compact (VLMRuntime.volume_floats); segment_ids [B, T]
    for packed rows (radjax/data/packing.py: M is then
    pack_max_examples x max_images, the row's images in order); logits_at [B, K]: logits at
    those positions only (see llm.Decoder). Returns (logits [B, T, V], aux)."""
    if self.cfg.num_labels and self.is_initializing():  # creates the label head too
      return self.with_labels(tokens, images, depth_mask)[0], None
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embeds = self.embed(tokens, images, depth_mask, tile_index, tile_weight)
    return self.llm(embeds, positions, cache, cache_index, key_mask, segment_ids, logits_at)

  def decode_step(self, tokens, positions, cache, cache_index, key_mask):
    """Text-only continuation with the KV cache (the images are in the cache)."""
    return self.llm(self.llm.embed(tokens), positions, cache, cache_index, key_mask)
