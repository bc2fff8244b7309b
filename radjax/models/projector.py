"""Linear and MLP projectors from vision features to the LLM's embedding width
(the Q-Former projector is in qformer.py, the Perceiver resampler in perceiver.py).

Every projector takes an optional token `mask` [N, T] (True: a real feature token; a
3D tower's depth padding is False). These map token by token, so a padded token's
output is zeroed; it never reaches a real one.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from radjax.models import layers
from radjax.models.runtime import Runtime

KINDS = ('linear', 'mlp')


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
  kind: str  # 'linear' | 'mlp' (LLaVA's mlp2x_gelu)
  in_dim: int  # vision feature width
  out_dim: int  # LLM embedding width

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'config.model.projector.kind: {self.kind!r} is not one of {KINDS}')

  def num_tokens(self, vision_tokens: int) -> int:
    """Tokens per image handed to the LLM."""
    return vision_tokens


def _masked(y, mask):
  return y if mask is None else jnp.where(mask[..., None], y, 0).astype(y.dtype)


class LinearProjector(nn.Module):
  cfg: ProjectorConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, mask=None):
    y = layers.Dense((self.cfg.out_dim,), ('vision_embed', 'embed'), True, self.rt.dtype,
                     name='fc')(x)
    return _masked(y, mask)


class MlpProjector(nn.Module):
  """Linear -> GELU -> Linear, the LLaVA-1.5 / RadVLM projector."""
  cfg: ProjectorConfig
  rt: Runtime = Runtime()

  @nn.compact
  def __call__(self, x, mask=None):
    cfg, dtype = self.cfg, self.rt.dtype
    h = layers.Dense((cfg.out_dim,), ('vision_embed', 'mlp'), True, dtype, name='fc1')(x)
    h = layers.ACTIVATIONS['gelu'](h)
    return _masked(layers.DenseOut(cfg.out_dim, ('mlp', 'embed'), 1, True, dtype, name='fc2')(h),
                   mask)
