"""Vision-language model: encode images -> project -> splice at placeholders -> LLM.

The three parts are chosen by kind (radjax/models/registry.py). Shapes are static:
every example carries `max_images` image slots (a mask says which are real) and the
prompt holds `tokens_per_image` placeholder tokens per real image, in order. The k-th
placeholder of a row takes that row's k-th image feature vector, so interleaved
multi-image prompts need nothing extra.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from radjax.models import llm as llm_lib
from radjax.models import registry
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class VLMConfig:
  vision: Any  # a vision kind's config
  projector: Any  # a projector kind's config
  llm: llm_lib.LLMConfig
  image_token_id: int

  @property
  def tokens_per_image(self) -> int:
    return self.projector.num_tokens(self.vision.num_tokens)


@dataclasses.dataclass(frozen=True)
class VLMRuntime:
  vision: Runtime = Runtime()
  projector: Runtime = Runtime()
  llm: Runtime = Runtime()


def splice(text_embeds, image_features, tokens, image_token_id):
  """Overwrites placeholder positions with image features, in order.

  text_embeds [B, T, E]; image_features [B, M*N, E]; tokens [B, T].
  """
  is_image = tokens == image_token_id
  index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_features.shape[1] - 1)
  gathered = jnp.take_along_axis(image_features, index[..., None], axis=1)
  return jnp.where(is_image[..., None], gathered.astype(text_embeds.dtype), text_embeds)


def _maybe_frozen(x, rt: Runtime):
  return jax.lax.stop_gradient(x) if rt.frozen else x


class VLM(nn.Module):
  cfg: VLMConfig
  rt: VLMRuntime = VLMRuntime()

  def setup(self):
    self.vision = registry.module('vision', self.cfg.vision, self.rt.vision)
    self.projector = registry.module('projector', self.cfg.projector, self.rt.projector)
    self.llm = registry.module('llm', self.cfg.llm, self.rt.llm)

  def encode_images(self, images):
    """images [B, M, H, W, C] -> projected features [B, M * tokens, E_llm]."""
    b, m = images.shape[:2]
    feats, _ = self.vision(images.reshape(b * m, *images.shape[2:]))
    feats = self.projector(_maybe_frozen(feats, self.rt.vision))
    feats = _maybe_frozen(feats, self.rt.projector)
    return feats.reshape(b, m * feats.shape[1], feats.shape[-1])

  def embed(self, tokens, images):
    text = self.llm.embed(tokens)
    return splice(text, self.encode_images(images), tokens, self.cfg.image_token_id)

  def __call__(self, tokens, images, positions=None, cache=None, cache_index=0,
               key_mask=None):
    """tokens [B, T]; images [B, M, H, W, C]. Returns (logits [B, T, V], aux)."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    embeds = self.embed(tokens, images)
    return self.llm(embeds, positions, cache, cache_index, key_mask)

  def decode_step(self, tokens, positions, cache, cache_index, key_mask):
    """Text-only continuation with the KV cache (the images are in the cache)."""
    return self.llm(self.llm.embed(tokens), positions, cache, cache_index, key_mask)
