"""Record bytes -> the arrays of one example: decode, draw an instruction task's turns
(radjax/data/instructions.py), encode them in the chat format (radjax/data/chat.py),
pad. Pure functions of (record, rng), so a resumed iterator repeats them."""
import dataclasses

import numpy as np

from radjax.data import anyres, chat, instructions, schema, volumes
from radjax.data import images as images_lib
from radjax.data import labels as labels_lib
from radjax.data import pixels as pixels_lib


@dataclasses.dataclass
class ImageSlots:
  """An Example's images -> [max_images, H, W, P] 8-bit pixels, their pixel tables and a
  mask of the real ones (radjax/data/pixels.py; `pixels`: config.data.pixels)."""
  image_size: int
  num_channels: int
  max_images: int
  mean: tuple
  std: tuple
  crop_scale: tuple = (0.8, 1.0)
  augment: bool = False  # random resized crop + jitter from the record's rng (training)
  jitter: bool = True  # with augment: the contrast/brightness jitter too
  pixels: str = 'float32'

  def __call__(self, example: dict, rng) -> dict:
    """{'images' [max_images, H, W, P], 'pixel_table' [max_images, 256, C] (float32:
    'images' [max_images, H, W, C] alone), 'image_mask' [max_images]}."""
    rng = rng if self.augment else None
    imgs = _checked_count(example, self.max_images)
    out = pixels_lib.empty(self.pixels, (self.max_images,), self.image_size, self.num_channels)
    for i, img in enumerate(imgs):
      pixels_lib.put(out, i, *images_lib.preprocess_pixels(
          img, size=self.image_size, num_channels=self.num_channels, mean=self.mean,
          std=self.std, record_id=example['id'], rng=rng, crop_scale=self.crop_scale,
          jitter=self.jitter, gray=self.pixels == 'gray8'))
    out['image_mask'] = np.arange(self.max_images) < len(imgs)
    return out


@dataclasses.dataclass
class TileSlots:
  """AnyRes: an Example's images -> their 8-bit tile slots [max_images, K, H, W, P] and
  pixel tables [max_images, K, 256, C] (zero past an image's tiles), plans (tile_index /
  tile_weight [max_images, N, 4]) and a mask of the real ones. No crop or jitter:
  LLaVA-NeXT's processor resizes and pads, nothing more."""
  spec: anyres.AnyRes
  num_channels: int
  max_images: int
  mean: tuple
  std: tuple
  pixels: str = 'float32'

  def __post_init__(self):
    fill = anyres.square_fill(self.mean)
    if self.pixels == 'gray8' and self.max_images > 1 and len(set(fill)) > 1:
      raise ValueError(f"config.data.pixels='gray8' and AnyRes with config.data.max_images="
                       f'{self.max_images}: an example of several images pads each in the '
                       f"mean colour {fill}, which is not gray; use pixels='uint8'")

  def __call__(self, example: dict, rng) -> dict:
    del rng  # the same tiles in training and evaluation
    imgs = _checked_count(example, self.max_images)
    s, t = self.spec, self.spec.tile
    out = pixels_lib.empty(self.pixels, (self.max_images, s.slots), t, self.num_channels)
    index = np.zeros((self.max_images, s.max_tokens, 4), np.int32)
    weight = np.zeros((self.max_images, s.max_tokens, 4), np.float32)
    table = images_lib.pixel_table(self.mean, self.std, self.num_channels)
    for i, img in enumerate(imgs):
      pil = images_lib.decode_image(img, self.num_channels, example['id'], keep_gray=True)
      if self.pixels == 'gray8':
        pil = images_lib.gray_only(pil, example['id'])
      if len(imgs) > 1:  # several images: one square tile each (anyres module doc)
        tiles = anyres.square_tile(pil, s, self.mean)[None]
        index[i], weight[i], _ = anyres.square_plan(s)
      else:
        tiles = anyres.tiles(pil, s)
        index[i], weight[i], _ = anyres.plan(pil.size[1], pil.size[0], s)
      pixels_lib.put(out, (i, slice(0, len(tiles))), tiles, table)  # the rest stay zeros
    out.update(tile_index=index, tile_weight=weight,
               image_mask=np.arange(self.max_images) < len(imgs))
    return out


def image_token_counts(arrays: dict) -> list[int] | None:
  """The real images' placeholder counts when they vary (AnyRes plans), else None."""
  if 'tile_weight' not in arrays:
    return None
  n = int(arrays['image_mask'].sum())
  return [int(c) for c in np.any(arrays['tile_weight'][:n] != 0, axis=-1).sum(-1)]


def first_image(example: dict, needed_by: str, *, size: int, num_channels: int, mean, std,
                rng=None, crop_scale=(0.8, 1.0), resize: str = 'square', jitter: bool = True,
                pixels: str = 'float32') -> dict:
  """The record's first image, preprocessed (augmented when `rng` is given: the random
  crop, and with `jitter` the intensity jitter, config.data.intensity_jitter), as `pixels`
  sends it: {'images' [size, size, P] 8-bit, 'pixel_table' [256, C]}, or 'images' float32
  [size, size, C] alone; a record without one is an error naming it and what needed it."""
  if not example['images']:
    raise schema.SchemaError(f"record {example['id']!r}: images: none ({needed_by} reads one)")
  out = pixels_lib.empty(pixels, (), size, num_channels)
  pixels_lib.put(out, (), *images_lib.preprocess_pixels(
      example['images'][0], size=size, num_channels=num_channels, mean=mean, std=std,
      record_id=example['id'], rng=rng, crop_scale=crop_scale, resize=resize, jitter=jitter,
      gray=pixels == 'gray8'))
  return out


def _checked_count(example: dict, max_images: int) -> list:
  imgs = example['images']
  if len(imgs) > max_images:
    raise schema.SchemaError(f"record {example['id']!r}: images: {len(imgs)} images but "
                             f'config.data.max_images={max_images}')
  return imgs


@dataclasses.dataclass
class VolumeSlots:
  """An Example's volumes (and 2D images, repeated to their depth) -> [max_images, H, W,
  max_depth, C] with the real slices marked in a depth mask (radjax/data/volumes.py), as
  `pixels` (config.data.pixels) sends them (radjax/data/pixels.py volume_fields): the
  stored voxels and 8-bit images, which the device repeats and normalises, or ('float32')
  the floats. No augmentation: RadFM's volumes get none either."""
  image_size: int
  num_channels: int
  max_images: int
  max_depth: int
  depth_patch: int
  mean: tuple
  std: tuple
  pixels: str = 'float32'
  # Training: a sample of more than many_images images is resized to at most
  # many_images_depth slices (0: max_depth), RadFM's collator's 32 for > 6 images.
  many_images: int = 0
  many_images_depth: int = 0

  def __call__(self, example: dict, rng) -> dict:
    """{'images' [M, H, W, D, C] (float32; else 'volumes' [M, H, W, D], 'volume_norm'
    [M, 2, C], 'images' [M, H, W, P] and 'pixel_table' [M, 256, C]), 'image_mask' [M],
    'depth_mask' [M, D]}."""
    del rng
    imgs = _checked_count(example, self.max_images)
    s, d, c = self.image_size, self.max_depth, self.num_channels
    most = (self.many_images_depth if self.many_images_depth and len(imgs) > self.many_images
            else d)
    kw = dict(size=s, max_depth=most, depth_patch=self.depth_patch, num_channels=c,
              mean=self.mean, std=self.std, record_id=example['id'])
    out = pixels_lib.empty_volumes(self.pixels, (self.max_images,), s, d, c)
    if self.pixels == 'float32':
      xs, depth = volumes.sample_input(imgs, **kw)
      for i, x in enumerate(xs):
        out['images'][i, :, :, :depth] = x
    else:
      parts, depth = volumes.sample_parts(imgs, gray=self.pixels == 'gray8', **kw)
      for i, x in enumerate(parts):
        if isinstance(x, tuple):  # a 2D image's planes and table, once
          pixels_lib.put(out, i, *x)
        else:
          pixels_lib.put_volume(out, i, x, self.mean, self.std)
    depth_mask = np.zeros((self.max_images, d), bool)
    depth_mask[:len(imgs), :depth] = True
    return {**out, 'image_mask': np.arange(self.max_images) < len(imgs),
            'depth_mask': depth_mask}


@dataclasses.dataclass
class ConversationProcessor:
  """One of `tasks` drawn per record -> turns -> tokens, with the images when `images`
  is set (a text-only model drops the images and their marks)."""
  encoder: chat.ConversationEncoder
  tasks: tuple[str, ...]
  options: instructions.Options
  max_len: int
  images: ImageSlots | TileSlots | VolumeSlots | None = None
  labels: labels_lib.LabelTargets | None = None  # the auxiliary label loss's targets

  def turns(self, example: dict, rng, served=None) -> list[dict]:
    served = served or instructions.served(example, self.tasks, self.options)
    turns = instructions.draw(example, served, rng, self.options)
    if self.images is None:
      turns = chat.without_images(turns)
    return turns

  def __call__(self, raw: bytes, rng: np.random.Generator | None) -> dict:
    example = schema.decode(raw)
    served = instructions.served(example, self.tasks, self.options)  # before decoding images
    out, n = {}, 0
    if self.images is not None:  # images first: their crops draw from rng before the task
      # (rng None: evaluation; variant 0 of the first task the record serves)
      out = self.images(example, rng)
      n = int(out['image_mask'].sum())
    counts = image_token_counts(out)
    arrays = self.encoder.training_arrays(self.turns(example, rng, served), n, self.max_len,
                                          example['id'], counts)
    if n and arrays['truncated']:
      out['image_mask'] = np.arange(self.images.max_images) < self._images_left(
          arrays['tokens'], counts or [self.encoder.image_tokens] * n)
    if self.labels is not None:
      out.update(self.labels(example))
    return {**arrays, **out}

  def _images_left(self, tokens, counts: list[int]) -> int:
    """How many images a cut left whole (the encoder drops a split one's run): a packed
    row keeps only those (radjax/data/packing.py trim), so the next example's placeholders
    take its own images."""
    left = int(np.sum(tokens == self.encoder.image_id))
    return int(np.sum(np.cumsum(counts) <= left))
