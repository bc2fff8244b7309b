"""Linear and MLP projectors from vision features to the LLM's embedding width
(the Q-Former projector is in qformer.py, the Perceiver resampler in perceiver.py).

A 'linear' or 'mlp' projector with `image_newline` also holds LLaVA-NeXT's learned
newline vector (radjax/data/anyres.py: after each row of an AnyRes feature map), at the
LLM's width: it lives where the features it joins are made.

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
  image_newline: bool = False  # AnyRes's learned row separator (config.model.anyres_grids)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'config.model.projector.kind: {self.kind!r} is not one of {KINDS}')

  def num_tokens(self, vision_tokens: int) -> int:
    """Tokens per image handed to the LLM."""
    return vision_tokens


def _masked(y, mask):
  return y if mask is None else jnp.where(mask[..., None], y, 0).astype(y.dtype)


def _newline(module: nn.Module):
  """The `image_newline` parameter [out_dim] (transformers' init: N(0, 1/out_dim))."""
  if not module.cfg.image_newline:
    return None
  init = nn.initializers.normal(stddev=module.cfg.out_dim ** -0.5)
  return module.param('image_newline', layers.param_init(init, ('embed',)),
                      (module.cfg.out_dim,))


class LinearProjector(nn.Module):
  cfg: ProjectorConfig
  rt: Runtime = Runtime()

  def setup(self):
    self.fc = layers.Dense((self.cfg.out_dim,), ('vision_embed', 'embed'), True, self.rt.dtype)
    self.image_newline = _newline(self)

  def __call__(self, x, mask=None):
    return _masked(self.fc(x), mask)


class MlpProjector(nn.Module):
  """Linear -> GELU -> Linear, the LLaVA-1.5 / RadVLM projector."""
  cfg: ProjectorConfig
  rt: Runtime = Runtime()

  def setup(self):
    cfg, dtype = self.cfg, self.rt.dtype
    self.fc1 = layers.Dense((cfg.out_dim,), ('vision_embed', 'mlp'), True, dtype)
    self.fc2 = layers.DenseOut(cfg.out_dim, ('mlp', 'embed'), 1, True, dtype)
    self.image_newline = _newline(self)

  def __call__(self, x, mask=None):
    h = layers.ACTIVATIONS['gelu'](self.fc1(x))
    return _masked(self.fc2(h), mask)
