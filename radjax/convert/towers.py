"""Per-tower HF codecs: which table converts a decoder or a vision tower, both ways.

A tower's weights travel between radjax layouts (scanned or not, ViT layers split at
`select_layer`, grown vocab) through its HF state dict, so one path serves import,
export and `init_from`.
"""
import dataclasses

from radjax.convert import hf_config as llm_hf_config
from radjax.convert import vocab as vocab_lib
from radjax.convert.common import ConversionError


def _llm_tables():
  from radjax import convert
  return convert.params_from_hf, convert.hf_from_params


def llm_to_hf(cfg, params, **hf_extra):
  """(transformers config, state dict) of an LLMConfig + its params."""
  family = llm_hf_config.export_family(cfg)
  _, to_hf = _llm_tables()
  return llm_hf_config.hf_config_from_llm(cfg, family, **hf_extra), to_hf(params, cfg)


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


# Fields a config may set differently from the weights it starts from.
_RUNTIME = ('dtype', 'attention_impl', 'remat_policy', 'scan_layers')


def llm_from_hf(hf_cfg, state_dict, target):
  """Params for LLMConfig `target` from an HF decoder; a larger target vocab grows it."""
  runtime = {k: getattr(target, k) for k in _RUNTIME}
  source = llm_hf_config.llm_config_from_hf(hf_cfg, **runtime)
  _check_same(source, target, 'config.model.llm', ('vocab_size',))
  from_hf, _ = _llm_tables()
  params = from_hf(state_dict, source, target.scan_layers)
  return vocab_lib.grow_vocab(params, target.vocab_size)


def vision_from_hf(hf_cfg, state_dict, target):
  """Params for ViTConfig `target` from an HF CLIP/SigLIP vision tower."""
  from radjax.convert import vit
  runtime = {k: getattr(target, k) for k in (*_RUNTIME, 'select_layer', 'keep_class_token')}
  source = vit.vit_config_from_hf(hf_cfg, **runtime)
  _check_same(source, target, 'config.model.vision', ())
  return vit.params_from_hf(state_dict, target, target.scan_layers)
