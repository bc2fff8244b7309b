"""Projectors from vision features to the LLM's embedding width."""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  kind: str  # 'linear' | 'mlp' (LLaVA's mlp2x_gelu)
  out_dim: int
  dtype: Any = jnp.bfloat16

  def __post_init__(self):
    if self.kind not in PROJECTORS:
      raise ValueError(f'config.model.projector.kind: {self.kind!r} is not one of '
                       f'{sorted(PROJECTORS)}')


class LinearProjector(nn.Module):
  cfg: ProjectorConfig

  @nn.compact
  def __call__(self, x):
    return layers.Dense((self.cfg.out_dim,), ('vision_embed', 'embed'), True, self.cfg.dtype,
                        name='fc')(x)


class MlpProjector(nn.Module):
  """Linear -> GELU -> Linear, the LLaVA-1.5 / RadVLM projector."""
  cfg: ProjectorConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    h = layers.Dense((cfg.out_dim,), ('vision_embed', 'mlp'), True, cfg.dtype, name='fc1')(x)
    h = layers.ACTIVATIONS['gelu'](h)
    return layers.DenseOut(cfg.out_dim, ('mlp', 'embed'), 1, True, cfg.dtype, name='fc2')(h)


PROJECTORS = {'linear': LinearProjector, 'mlp': MlpProjector}


def make_projector(cfg: ProjectorConfig, name: str = 'projector') -> nn.Module:
  return PROJECTORS[cfg.kind](cfg, name=name)
