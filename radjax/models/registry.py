"""Model parts by name: `config.model.<part>.kind` -> its architecture dataclass and
its Linen module. Adding a kind is a module plus one entry here (and, where HF has
the class, a conversion table in radjax/convert/parts.py)."""
import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import llm, perceiver, projector, qformer, vit, vit3d, vqgan
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Kind:
  config: type  # frozen dataclass of what the part is (exported)
  module: type  # nn.Module taking (config, Runtime)
  # config -> the smallest inputs the module's init takes (its params' shapes depend on
  # the config alone).
  example_inputs: Callable[..., tuple]


def _images(cfg) -> tuple:
  return (jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)),)


def _volume(cfg) -> tuple:  # one patch
  return (jnp.zeros((1, cfg.patch_size, cfg.patch_size, cfg.depth_patch_size,
                     cfg.num_channels)),)


def _features(cfg) -> tuple:
  return (jnp.zeros((1, 1, cfg.in_dim)),)


def _embeddings(cfg) -> tuple:  # and their positions
  return jnp.zeros((1, 1, cfg.embed_dim)), jnp.zeros((1, 1), jnp.int32)


PARTS = {
    'vision': {'vit': Kind(vit.ViTConfig, vit.ViT, _images),
               'vit3d': Kind(vit3d.ViT3DConfig, vit3d.ViT3D, _volume)},
    'projector': {'linear': Kind(projector.ProjectorConfig, projector.LinearProjector,
                                 _features),
                  'mlp': Kind(projector.ProjectorConfig, projector.MlpProjector, _features),
                  'qformer': Kind(qformer.QFormerConfig, qformer.QFormerProjector, _features),
                  'perceiver': Kind(perceiver.PerceiverConfig, perceiver.PerceiverProjector,
                                    _features)},
    'llm': {'decoder': Kind(llm.LLMConfig, llm.Decoder, _embeddings)},
    # The image codec is a model of its own (config.model.kind='vqgan'), never in a VLM.
    'vqgan': {'vqgan': Kind(vqgan.VQGANConfig, vqgan.VQGAN, _images)},
}


def kind(part: str, name: str) -> Kind:
  if part not in PARTS:
    raise ValueError(f'config.model: unknown part {part!r}; parts are {sorted(PARTS)}')
  if name not in PARTS[part]:
    raise ValueError(f'config.model.{part}.kind: {name!r} is not one of {sorted(PARTS[part])}')
  return PARTS[part][name]


def module(part: str, cfg, rt: Runtime = Runtime(), name: str | None = None) -> nn.Module:
  return kind(part, cfg.kind).module(cfg, rt, name=name)


def example_inputs(part: str, cfg) -> tuple:
  return kind(part, cfg.kind).example_inputs(cfg)
