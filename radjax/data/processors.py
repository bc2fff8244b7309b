"""Record bytes -> the arrays of one example: decode, draw an instruction task's turns
(radjax/data/instructions.py), encode them in the chat format (radjax/data/chat.py),
pad. Pure functions of (record, rng), so a resumed iterator repeats them."""
import dataclasses

import numpy as np

from radjax.data import chat, instructions, schema
from radjax.data import images as images_lib


@dataclasses.dataclass
class ImageSlots:
  """An Example's images -> [max_images, H, W, C] pixels and a mask of the real ones."""
  image_size: int
  num_channels: int
  max_images: int
  mean: tuple
  std: tuple
  crop_scale: tuple = (0.8, 1.0)
  augment: bool = False  # random resized crop + jitter from the record's rng (training)

  def __call__(self, example: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    rng = rng if self.augment else None
    imgs = example['images']
    if len(imgs) > self.max_images:
      raise schema.SchemaError(f"record {example['id']!r}: images: {len(imgs)} images but "
                               f'config.data.max_images={self.max_images}')
    out = np.zeros((self.max_images, self.image_size, self.image_size, self.num_channels),
                   np.float32)
    for i, img in enumerate(imgs):
      out[i] = images_lib.preprocess(img, size=self.image_size, num_channels=self.num_channels,
                                     mean=self.mean, std=self.std, record_id=example['id'],
                                     rng=rng, crop_scale=self.crop_scale)
    return out, np.arange(self.max_images) < len(imgs)


@dataclasses.dataclass
class ConversationProcessor:
  """One of `tasks` drawn per record -> turns -> tokens, with the images when `images`
  is set (a text-only model drops the images and their marks)."""
  encoder: chat.ConversationEncoder
  tasks: tuple[str, ...]
  options: instructions.Options
  max_len: int
  images: ImageSlots | None = None

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
      out['images'], out['image_mask'] = self.images(example, rng)
      n = int(out['image_mask'].sum())
    arrays = self.encoder.training_arrays(self.turns(example, rng, served), n, self.max_len,
                                          example['id'])
    return {**arrays, **out}
