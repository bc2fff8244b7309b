"""A vision tower with a multi-label head: finding classification. It scores whether a
generated image shows what its report asked for (LLM-CXR's faithfulness check), and a
VLM's vision tower can start from it or carry the same head as an auxiliary loss."""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from radjax.models import layers, registry
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  vision: Any  # a vision kind's config
  num_labels: int


class LabelHead(nn.Module):
  """Tokens [N, T, D] -> (logits [N, L], pooled features [N, D], token scores [N, T, L]).
  Each label attends over the tokens with its own query (a small finding lives in one
  token; a mean would dilute it), then a per-label linear reads its pooled vector. The
  features are the normed tokens' mean (a Frechet distance's space); the scores are the
  queries' logits per token, which box targets can supervise (train/loss.py)."""
  num_labels: int
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, feats, token_mask=None):
    h = layers.LayerNorm(name='norm')(feats.astype(jnp.float32))
    scores = layers.Dense((self.num_labels,), ('vision_embed', None), False, jnp.float32,
                          name='query')(h)  # [N, T, L]
    w = None if token_mask is None else token_mask.astype(jnp.float32)[..., None]
    attn = jax.nn.softmax(scores if w is None else jnp.where(w > 0, scores, -1e9), axis=1)
    per_label = jnp.einsum('ntl,ntd->nld', attn, h)
    kernel = self.param('out', layers.param_init(nn.initializers.lecun_normal(),
                                                 (None, 'vision_embed')),
                        (self.num_labels, h.shape[-1]), jnp.float32)
    bias = self.param('bias', layers.param_init(nn.initializers.zeros, (None,)),
                      (self.num_labels,), jnp.float32)
    logits = jnp.einsum('nld,ld->nl', per_label, kernel) + bias
    if w is None:
      pooled = jnp.mean(h, axis=1)
    else:
      pooled = jnp.sum(h * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    return logits, pooled, scores


class Classifier(nn.Module):
  cfg: ClassifierConfig
  rt: Runtime = Runtime()

  def setup(self):
    self.vision = registry.module('vision', self.cfg.vision, self.rt)
    self.head = LabelHead(self.cfg.num_labels, self.rt)

  def __call__(self, images, depth_mask=None):
    """images [N, H, W, C] -> (logits [N, L], pooled features [N, D])."""
    return self.with_scores(images, depth_mask)[:2]

  def with_scores(self, images, depth_mask=None):
    """(logits, pooled features, token scores [N, T, L]): LabelHead's outputs."""
    feats, aux = self.vision(images) if depth_mask is None else self.vision(images, depth_mask)
    return self.head(feats, aux.get('token_mask'))
