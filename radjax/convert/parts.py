"""HF codecs per model part kind: which table converts a part, both ways.

`CODECS[(part, kind)]` reads the part's config from an HF config, converts its
weights in both directions and builds the HF config to export. A part's weights
travel between radjax layouts (scanned or not, grown vocab) through its HF state
dict, so one path serves `from-hf`, `to-hf` and `init_from`. Adding a part kind with
an HF equivalent is one entry here plus its table module.
"""
import dataclasses
import functools
import re
from typing import Callable

from radjax.convert import common, llm_families, qformer, vit
from radjax.convert import hf_config as llm_hf_config
from radjax.convert import vocab as vocab_lib
from radjax.convert.common import ConversionError, Rule
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import registry
from radjax.models.runtime import Runtime


@dataclasses.dataclass(frozen=True)
class Codec:
  # HF config -> the part's architecture dataclass (`keep` fields HF does not have
  # come from the target, e.g. the ViT's select_layer).
  config_from_hf: Callable
  params_from_hf: Callable  # (state_dict, cfg, scan) -> params
  to_hf: Callable  # (cfg, params, **token_fields) -> (HF config, state dict)
  part_of: Callable = lambda hf, sd: (hf, sd)  # a bigger HF model -> this part's config, tensors
  keep: tuple[str, ...] = ()
  free: tuple[str, ...] = ()  # target fields a source may differ in (handled by conversion)
  # Fields that describe the model but not its weights (the decoder's context length): a
  # source and a target may differ in them, and the weights carry over unchanged.
  meta: tuple[str, ...] = ()

  def same_weights(self, source, target) -> bool:
    """Whether two configs of this part hold the same weights (they differ at most in `meta`)."""
    return dataclasses.replace(source, **{k: getattr(target, k) for k in self.meta}) == target


def _llm_to_hf(cfg, params, **hf_extra):
  family = llm_hf_config.export_family(cfg)
  return (llm_hf_config.hf_config_from_llm(cfg, family, **hf_extra),
          llm_families.hf_from_params(params, cfg))


def _llm_params(state_dict, cfg, scan):
  return llm_families.params_from_hf(state_dict, cfg, scan)


def _llm_part(hf, state_dict):
  """A BLIP-2's decoder (its `language_model`, a causal LM) as a model of its own."""
  if getattr(hf, 'model_type', None) != 'blip-2':
    return hf, state_dict
  if not getattr(hf, 'use_decoder_only_language_model', True):
    raise UnsupportedConfig(f'HF config field text_config.model_type='
                            f'{hf.text_config.model_type!r}: an encoder-decoder language '
                            'model; radjax decoders are causal')
  prefix = 'language_model.'
  return hf.text_config, {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}


CODECS = {
    ('llm', 'decoder'): Codec(llm_hf_config.llm_config_from_hf, _llm_params, _llm_to_hf,
                              part_of=_llm_part, free=('vocab_size',),
                              meta=('max_position_embeddings',)),
    ('vision', 'vit'): Codec(vit.vit_config_from_hf, vit.params_from_hf,
                             lambda cfg, params, **_: (vit.hf_config_from_vit(cfg),
                                                       vit.hf_from_params(params, cfg)),
                             part_of=vit.vision_part, keep=('select_layer', 'keep_class_token')),
    ('projector', 'qformer'): Codec(qformer.config_from_hf, qformer.params_from_hf,
                                    lambda cfg, params, **_: (qformer.hf_config(cfg),
                                                              qformer.hf_from_params(params, cfg))),
}


def codec(part: str, kind: str) -> Codec:
  if (part, kind) not in CODECS:
    raise UnsupportedConfig(f'config.model.{part}.kind={kind!r} has no Hugging Face '
                            f'conversion (have {sorted(CODECS)})')
  return CODECS[(part, kind)]


def to_hf(part: str, cfg, params, **hf_extra):
  """(HF config, state dict) of one part."""
  return codec(part, cfg.kind).to_hf(cfg, params, **hf_extra)


def import_part(part: str, kind: str, hf_cfg, state_dict, scan: bool):
  """(cfg, params) of an HF model of this part (or the part inside a bigger one)."""
  c = codec(part, kind)
  hf_cfg, state_dict = c.part_of(hf_cfg, state_dict)
  cfg = c.config_from_hf(hf_cfg)
  return cfg, c.params_from_hf(state_dict, cfg, scan)


@functools.lru_cache(maxsize=32)
def part_shapes(part: str, cfg, scan: bool) -> dict:
  """Flat {our path: shape} of a part's params in the given layer layout, from the model's
  own abstract init (nothing allocated): every kind has it, an HF conversion or not."""
  return common.shapes_of(registry.module(part, cfg, Runtime(scan_layers=scan)),
                          *registry.example_inputs(part, cfg))


def _reshaped(part: str, target, field: str, value, scan: bool) -> dict:
  """{path: (shape with `field`=value, shape in target)} of the params that field shapes
  (None: absent); {} where it shapes none."""
  try:
    there = part_shapes(part, dataclasses.replace(target, **{field: value}), scan)
  except ValueError:  # the value alone is not a valid config (e.g. width vs heads)
    return {}
  here = part_shapes(part, target, scan)
  return {p: (there.get(p), here.get(p)) for p in sorted(set(there) | set(here))
          if there.get(p) != here.get(p)}


def check_same(part: str, source, target, scan: bool, fresh: str = '') -> None:
  """Two configs of a part (a pretrained one, the run's) have every field equal, bar the
  HF codec's `free` and `meta` ones and those that shape only params `fresh` (init_fresh)
  names; an error names the field and a param it reshapes."""
  c = CODECS.get((part, target.kind))
  excused = c.free + c.meta if c else ()
  for field in dataclasses.fields(target):
    if field.name in excused or not field.init:
      continue
    want, have = getattr(target, field.name), getattr(source, field.name)
    if want == have:
      continue
    reshaped = _reshaped(part, target, field.name, have, scan)
    if fresh and reshaped and all(re.fullmatch(fresh, p) for p in reshaped):
      continue
    shapes = ''
    if reshaped:
      path, (there, here) = next(iter(reshaped.items()))
      shapes = f': {path} has shape {there} there, {here} here'
    raise ConversionError(f'config.model.{part}.{field.name}={want!r} but the pretrained '
                          f'model has {have!r}{shapes}')


def params_for(part: str, hf_cfg, state_dict, target, scan: bool, fresh: str = ''):
  """Params for the part config `target` from HF tensors of the same part; a decoder's
  larger target vocab grows it. A field that shapes only params the regex `fresh`
  (init_fresh) names may differ: those params come at the source's shapes, for the caller
  to leave out. Any other difference is an error naming the field."""
  c = codec(part, target.kind)
  hf_cfg, state_dict = c.part_of(hf_cfg, state_dict)
  source = c.config_from_hf(hf_cfg)
  if c.keep:
    source = dataclasses.replace(source, **{k: getattr(target, k) for k in c.keep})
  check_same(part, source, target, scan, fresh)
  params = c.params_from_hf(state_dict, source, scan)
  if part == 'llm':
    params = vocab_lib.grow_vocab(params, target.vocab_size)
  return params


# A 'linear' projector read from BLIP-2 names: MiniGPT-4 / XrayGPT's `llama_proj`
# (radjax.convert.lavis renames it) is BLIP-2's language projection.
_LINEAR_RULES = (Rule('fc/kernel', 'language_projection.weight', 'linear'),
                 Rule('fc/bias', 'language_projection.bias', 'identity'))


def params_from_tensors(part: str, state_dict: dict, target, scan: bool,
                        source: str = 'checkpoint', fresh: str = ''):
  """Params for the part config `target` from tensors in HF names that come without an
  HF config (a `.pth` / `.bin` file, LAVIS names already mapped by radjax.convert.lavis).
  The target's architecture is taken as given; every tensor's shape is checked against
  it. Vision: `vision_model.*` (a BLIP-2 file's other tensors are left out); projector
  'qformer': `qformer.*`, `query_tokens`, `language_projection.*`; projector 'linear':
  `language_projection.*` alone. Projector params the regex `fresh` (init_fresh) names
  are left out: the file need not hold them, at any shape."""
  skip = fresh or r'$^'
  kind = target.kind
  if (part, kind) == ('vision', 'vit'):
    tensors = {k: v for k, v in state_dict.items() if k.startswith(vit.PREFIX)}
    if not tensors:
      raise ConversionError(f'{source}: no vision tower tensors (vision_model.* or LAVIS '
                            'visual_encoder.*)')
    return vit.params_from_hf(tensors, target, scan)
  if (part, kind) == ('projector', 'qformer'):
    return qformer.params_from_hf(state_dict, target, skip=skip)
  if (part, kind) == ('projector', 'linear'):
    flat = common.to_ours(state_dict, _LINEAR_RULES,
                          {'linear': common.LINEAR, 'identity': common.IDENTITY},
                          part_shapes(part, target, False), 0, scan=False,
                          ignore=r'^vision_model\.', skip=skip)
    return common.unflatten(flat)
  raise UnsupportedConfig(f'config.model.{part}.kind={kind!r} cannot start from a single '
                          f'weights file ({source}); use an HF directory or a workdir')
