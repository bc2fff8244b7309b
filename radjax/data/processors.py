"""Record bytes -> the arrays of one example, per kind of task: decode, template,
tokenise, pad. Pure functions of (record, rng), so a resumed iterator repeats them."""
import dataclasses

import numpy as np

from radjax.data import images as images_lib
from radjax.data import schema, templates, tokens


@dataclasses.dataclass
class ImageTextProcessor:
  """Image(s) + instruction -> answer, in the chat layout of radjax/data/tokens.py."""
  encoder: tokens.TurnEncoder
  template: str
  image_size: int
  num_channels: int
  max_images: int
  max_len: int
  mean: tuple
  std: tuple
  crop_scale: tuple = (0.8, 1.0)

  def images(self, example: dict, rng) -> tuple[np.ndarray, np.ndarray]:
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
    mask = np.arange(self.max_images) < len(imgs)
    return out, mask

  def __call__(self, raw: bytes, rng: np.random.Generator | None) -> dict:
    example = schema.decode(raw)
    pixels, mask = self.images(example, rng)
    instruction, target = templates.get_template(self.template)(example, rng)
    arrays = self.encoder.training_arrays(instruction, target, int(mask.sum()), self.max_len,
                                          example['id'])
    return {**arrays, 'images': pixels, 'image_mask': mask}


@dataclasses.dataclass
class TextProcessor:
  """Text alone for a decoder: the template's target as plain text (an instruction,
  where the template gives one, goes first)."""
  encoder: tokens.TextEncoder
  template: str
  max_len: int

  def __call__(self, raw: bytes, rng: np.random.Generator | None) -> dict:
    example = schema.decode(raw)
    instruction, target = templates.get_template(self.template)(example, rng)
    text = f'{instruction}\n{target}' if instruction else target
    return self.encoder.training_arrays(text, self.max_len)
