"""Per-tower HF codecs: which table converts a decoder or a vision tower, both ways.

A tower's weights travel between radjax layouts (scanned or not, ViT layers split at
`select_layer`, grown vocab) through its HF state dict, so one path serves import,
export and `init_from`.
"""
import dataclasses

from radjax.convert import hf_config as llm_hf_config
from radjax.convert import llm_families
from radjax.convert import vocab as vocab_lib
from radjax.convert.common import ConversionError
from radjax.models import factory


def llm_to_hf(cfg, params, **hf_extra):
  """(transformers config, state dict) of an LLMConfig + its params."""
  family = llm_hf_config.export_family(cfg)
  return (llm_hf_config.hf_config_from_llm(cfg, family, **hf_extra),
          llm_families.hf_from_params(params, cfg))


def vision_to_hf(cfg, params):
  from radjax.convert import vit
  return vit.hf_config_from_vit(cfg), vit.hf_from_params(params, cfg)


def _check_same(source, target, section: str, free: tuple[str, ...]) -> None:
  for field in dataclasses.fields(target):
    if field.name in free:
      continue
    want, have = getattr(target, field.name), getattr(source, field.name)
    if want != have:
      raise ConversionError(f'{section}.{field.name}={want!r} but the pretrained model has '
                            f'{have!r}')




def llm_from_hf(hf_cfg, state_dict, target):
  """Params for LLMConfig `target` from an HF decoder; a larger target vocab grows it."""
  runtime = {k: getattr(target, k) for k in factory.RUNTIME_FIELDS}
  source = llm_hf_config.llm_config_from_hf(hf_cfg, **runtime)
  _check_same(source, target, 'config.model.llm', ('vocab_size',))
  params = llm_families.params_from_hf(state_dict, source, target.scan_layers)
  return vocab_lib.grow_vocab(params, target.vocab_size)


def vision_from_hf(hf_cfg, state_dict, target):
  """Params for ViTConfig `target` from an HF CLIP/SigLIP vision tower."""
  from radjax.convert import vit
  kept = (*factory.RUNTIME_FIELDS, 'select_layer', 'keep_class_token')  # not in HF's config
  runtime = {k: getattr(target, k) for k in kept}
  source = vit.vit_config_from_hf(hf_cfg, **runtime)
  _check_same(source, target, 'config.model.vision', ())
  return vit.params_from_hf(state_dict, target, target.scan_layers)
