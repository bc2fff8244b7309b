"""What `from-hf` and `to-hf` do for each model kind: an LLM, a vision tower, a VLM.

Import fills a radjax config (radjax/core/defaults.py, the model section from the HF
config) and the params; export writes safetensors, config.json, the tokenizer, a
generation config and, for a VLM, a Llava processor.
"""
import json
import os

import jax
import numpy as np
from absl import logging

from radjax.core import defaults as base
from radjax.convert import hf_io, towers
from radjax.convert.common import ConversionError
from radjax.convert.hf_config import export_family
from radjax.data import tokens
from radjax.models import factory

_LLM_FAMILIES = ('llama', 'qwen2', 'gpt_neox')


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _set(section, values: dict) -> None:
  with section.unlocked():
    for k, v in values.items():
      section[k] = v


def import_hf(family: str, hf_cfg, state_dict: dict, scan: bool = True):
  """(radjax config, params) for an HF model of `family` (see __main__.FAMILIES)."""
  config = base.get_config()
  config.model.scan_layers = scan
  # Compute in the precision the weights were published in (bf16 checkpoints stay bf16).
  hf_dtype = str(getattr(hf_cfg, 'dtype', None) or getattr(hf_cfg, 'torch_dtype', None) or '')
  config.model.dtype = 'bfloat16' if 'bfloat16' in hf_dtype else 'float32'
  runtime = dict(scan_layers=scan)
  if family in _LLM_FAMILIES:
    from radjax.convert import hf_config
    cfg = hf_config.llm_config_from_hf(hf_cfg, **runtime)
    config.model.kind = 'llm'
    _set(config.model.llm, factory.tower_fields(cfg))
    return config, towers.llm_from_hf(hf_cfg, state_dict, cfg)
  if family in ('clip_vision', 'siglip_vision'):
    from radjax.convert import vit
    hf_cfg, state_dict = vit.vision_part(hf_cfg, state_dict)
    cfg = vit.vit_config_from_hf(hf_cfg, select_layer=-1, **runtime)
    config.model.kind = 'vision'
    _set(config.model.vision, factory.tower_fields(cfg))
    _set_image_stats(config, cfg.variant)
    return config, towers.vision_from_hf(hf_cfg, state_dict, cfg)
  if family == 'llava':
    from radjax.convert import llava
    vlm_cfg = llava.vlm_config_from_hf(hf_cfg, **runtime)
    config.model.kind = 'vlm'
    _set(config.model.llm, factory.tower_fields(vlm_cfg.llm))
    _set(config.model.vision, factory.tower_fields(vlm_cfg.vision))
    config.model.projector.kind = vlm_cfg.projector.kind
    config.model.image_token_id = vlm_cfg.image_token_id
    _set_image_stats(config, vlm_cfg.vision.variant)
    return config, llava.params_from_hf(state_dict, vlm_cfg, scan)
  raise ValueError(f'unknown family {family!r}')


def _set_image_stats(config, variant: str) -> None:
  if variant == 'siglip':  # SigLIP normalises to [-1, 1]
    config.data.image_mean = (0.5, 0.5, 0.5)
    config.data.image_std = (0.5, 0.5, 0.5)


def image_stats_from_dir(config, hf_dir: str) -> None:
  """The HF image processor's mean/std, where the directory has one, override defaults."""
  for name in ('preprocessor_config.json', 'processor_config.json'):
    path = os.path.join(hf_dir, name)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      raw = json.load(f)
    raw = raw.get('image_processor', raw)
    if 'image_mean' in raw and 'image_std' in raw:
      config.data.image_mean = tuple(float(x) for x in raw['image_mean'])
      config.data.image_std = tuple(float(x) for x in raw['image_std'])
      return


def _tokenizer_path(config) -> str | None:
  if not (config.data.tokenizer or config.data.dir):
    return None
  path = tokens.tokenizer_path(config)
  return path if os.path.exists(path) else None


def _special_ids(tokenizer) -> dict:
  vocab = tokenizer.get_vocab()
  return {k: vocab[t] for k, t in tokens.SPECIALS.items() if t in vocab}


def _token_fields(tokenizer) -> dict:
  """bos/eos/pad ids for the HF config; a chat model stops at end-of-turn too."""
  ids = _special_ids(tokenizer)
  eos = [ids[k] for k in ('end', 'eos') if k in ids]
  return dict(bos_token_id=ids.get('bos'), pad_token_id=ids.get('pad'),
              eos_token_id=eos if len(eos) > 1 else (eos[0] if eos else None))


def export_hf(config, params, out: str, dtype: str = 'float32') -> None:
  """Writes the model `config.model` describes (LLM, vision tower or Llava) to `out`."""
  tok_path = _tokenizer_path(config)
  tokenizer = tokens.load_tokenizer(tok_path) if tok_path else None
  extra = _token_fields(tokenizer) if tokenizer else {}
  kind = config.model.kind
  if kind == 'llm':
    cfg = factory.llm_config(config.model)
    hf_cfg, state_dict = towers.llm_to_hf(cfg, params, **extra)
  elif kind == 'vision':
    hf_cfg, state_dict = towers.vision_to_hf(factory.vit_config(config.model), params)
  elif kind == 'vlm':
    from radjax.convert import llava
    vlm_cfg = factory.vlm_config(config.model)
    hf_cfg = llava.hf_config_from_vlm(vlm_cfg, export_family(vlm_cfg.llm), **extra)
    state_dict = llava.hf_from_params(params, vlm_cfg)
  else:
    raise ConversionError(f'config.model.kind={kind!r} is not one of llm, vision, vlm')
  hf_io.save_hf_dir(out, hf_cfg, state_dict, dtype)
  if tokenizer is None:
    logging.warning('no tokenizer found (config.data.tokenizer / data.dir); exported weights '
                    'only')
    return
  tokenizer.chat_template = tokens.CHAT_TEMPLATE if 'user' in _special_ids(tokenizer) else None
  if kind == 'vlm':
    vision = factory.vit_config(config.model)
    llava.save_processor(out, tok_path, vision.image_size, tuple(config.data.image_mean),
                         tuple(config.data.image_std), vision.num_tokens, vision.variant,
                         tokenizer.chat_template)
  else:
    tokenizer.save_pretrained(out)
  if kind != 'vision':
    _write_generation_config(out, extra)


def _write_generation_config(out: str, token_fields: dict) -> None:
  fields = {k: v for k, v in token_fields.items() if v is not None}
  with open(os.path.join(out, 'generation_config.json'), 'w') as f:
    json.dump({'do_sample': False, **fields}, f, indent=1)
