"""Model parts by name: `config.model.<part>.kind` -> its architecture dataclass and
its Linen module. Adding a kind is a module plus one entry here (and, where HF has
the class, a conversion table in radjax/convert/parts.py)."""
import dataclasses

import flax.linen as nn

from radjax.models import llm, perceiver, projector, qformer, vit, vit3d, vqgan
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Kind:
  config: type  # frozen dataclass of what the part is (exported)
  module: type  # nn.Module taking (config, Runtime)


PARTS = {
    'vision': {'vit': Kind(vit.ViTConfig, vit.ViT),
               'vit3d': Kind(vit3d.ViT3DConfig, vit3d.ViT3D)},
    'projector': {'linear': Kind(projector.ProjectorConfig, projector.LinearProjector),
                  'mlp': Kind(projector.ProjectorConfig, projector.MlpProjector),
                  'qformer': Kind(qformer.QFormerConfig, qformer.QFormerProjector),
                  'perceiver': Kind(perceiver.PerceiverConfig, perceiver.PerceiverProjector)},
    'llm': {'decoder': Kind(llm.LLMConfig, llm.Decoder)},
    # The image codec is a model of its own (config.model.kind='vqgan'), never in a VLM.
    'vqgan': {'vqgan': Kind(vqgan.VQGANConfig, vqgan.VQGAN)},
}


def kind(part: str, name: str) -> Kind:
  if part not in PARTS:
    raise ValueError(f'config.model: unknown part {part!r}; parts are {sorted(PARTS)}')
  if name not in PARTS[part]:
    raise ValueError(f'config.model.{part}.kind: {name!r} is not one of {sorted(PARTS[part])}')
  return PARTS[part][name]


def module(part: str, cfg, rt: Runtime = Runtime(), name: str | None = None) -> nn.Module:
  return kind(part, cfg.kind).module(cfg, rt, name=name)
