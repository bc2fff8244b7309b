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

from radjax.convert import hf_io, parts
from radjax.convert.common import ConversionError
from radjax.convert.hf_config import export_family
from radjax.core import config_checks
from radjax.core import defaults as base
from radjax.data import chat, mixture, tokens
from radjax.models import factory

# --family -> (part, kind) for one part alone; 'llava' and 'llava_onevision' are the whole
# VLM.
FAMILY_PARTS = {'llama': ('llm', 'decoder'), 'qwen2': ('llm', 'decoder'),
                'gpt_neox': ('llm', 'decoder'), 'clip_vision': ('vision', 'vit'),
                'siglip_vision': ('vision', 'vit'), 'blip2_vision': ('vision', 'vit'),
                'blip2_qformer': ('projector', 'qformer')}


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _set(section, values: dict) -> None:
  with section.unlocked():
    for k, v in values.items():
      section[k] = v


def import_hf(family: str, hf_cfg, state_dict: dict, scan: bool = True):
  """(radjax config, params) for an HF model of `family` (see __main__.FAMILIES)."""
  config = base.get_config()
  config.runtime.scan_layers = scan
  # Compute in the precision the weights were published in (bf16 checkpoints stay bf16).
  hf_dtype = str(getattr(hf_cfg, 'dtype', None) or getattr(hf_cfg, 'torch_dtype', None) or '')
  config.runtime.dtype = 'bfloat16' if 'bfloat16' in hf_dtype else 'float32'
  if family in FAMILY_PARTS:
    part, kind = FAMILY_PARTS[family]
    cfg, params = parts.import_part(part, kind, hf_cfg, state_dict, scan)
    config.model.kind = part
    _set(config.model[part], factory.part_fields(cfg))
    if part == 'vision':
      _set_image_stats(config, cfg.variant)
    return config, params
  if family == 'blip2':
    from radjax.convert import blip2
    vlm_cfg, params = blip2.import_vlm(hf_cfg, state_dict, scan)
    _set_vlm(config, vlm_cfg)
    return config, params
  if family in ('llava', 'llava_onevision'):
    from radjax.convert import llava
    vlm_cfg = llava.vlm_config_from_hf(hf_cfg)
    _set_vlm(config, vlm_cfg)
    if vlm_cfg.anyres_grids:  # its processor neither crops nor jitters (the task refuses it)
      config.data.augment = False
    return config, llava.params_from_hf(state_dict, vlm_cfg, scan)
  raise ValueError(f'unknown family {family!r}')


def _set_vlm(config, vlm_cfg) -> None:
  """config.model as the imported VLM's parts and layout."""
  config.model.kind = 'vlm'
  config.model.anyres_grids = vlm_cfg.anyres_grids
  config.model.anyres_max_tiles = vlm_cfg.anyres_max_tiles
  for part in ('vision', 'projector', 'llm'):
    _set(config.model[part], factory.part_fields(getattr(vlm_cfg, part)))
  _set(config.model.projector, dict(in_dim=0, out_dim=0))  # from the towers
  config.model.image_token_id = vlm_cfg.image_token_id
  _set_image_stats(config, vlm_cfg.vision.variant)


def import_vqgan(hf_dir: str):
  """(radjax config, params) of a diffusers VQModel directory, or of a Taming checkpoint
  file (`.ckpt` read with weights_only=True, or `.safetensors`); a fresh discriminator."""
  from radjax.convert import taming, vqgan
  config = base.get_config()
  if os.path.isfile(hf_dir):
    taming_sd = taming.load_state_dict(hf_dir)
    raw = taming.diffusers_config(taming_sd, source=hf_dir)
    state_dict = taming.diffusers_names(taming_sd, hf_dir)
    # LLM-CXR encodes with a Taming codec after taking the shorter side to the size
    # (Lanczos) and the centre square (encode_cxr_all.py): so do its Codec and encode_codes.
    config.data.resize = 'crop'
  else:
    raw, state_dict = vqgan.load_dir(hf_dir)
  config.task = 'vqgan'
  config.model.kind = 'vqgan'
  config.runtime.dtype = 'float32'
  cfg = vqgan.config_from_hf(raw, hf_dir)
  _set(config.model.vqgan, factory.part_fields(cfg))
  return config, vqgan.params_from_hf(state_dict, cfg, config.seed)


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
    if raw.get('do_center_crop') and not config.model.get('anyres_grids'):
      # llava-hf's LLaVA-1.5: shortest side to the tower's size, then the middle square.
      logging.warning('%s: its image processor crops the middle square (do_center_crop); '
                      'radjax resizes the whole image to a square, so a non-square image '
                      'reads otherwise than through that processor (a square one alike)', path)
    if 'image_mean' in raw and 'image_std' in raw:
      config.data.image_mean = tuple(float(x) for x in raw['image_mean'])
      config.data.image_std = tuple(float(x) for x in raw['image_std'])
      return


def _tokenizer_path(config) -> str | None:
  """The tokenizer the model was trained with: config.data.tokenizer, or its eval dataset's
  (data.dir, or a mixture's first component: LLM-CXR's codes), where it still exists."""
  if not (config.data.tokenizer or mixture.eval_dir(config)):
    return None
  try:
    path = tokens.tokenizer_path(config)
  except FileNotFoundError:  # the dataset has moved: exported without it, and said
    return None
  return path if os.path.exists(path) else None


def _token_fields(tokenizer, fmt, stop_tokens=()) -> dict:
  """bos/eos/pad ids for the HF config; a chat model stops at its end-of-turn too, and
  at config.eval.stop_tokens."""
  stops = list(chat.ConversationEncoder(tokenizer, fmt, stop_tokens=tuple(stop_tokens)).stop_ids)
  return dict(bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
              eos_token_id=stops if len(stops) > 1 else stops[0])


def export_hf(config, params, out: str, dtype: str = 'float32') -> None:
  """Writes the model `config.model` describes (one part, or the VLM as Llava, or with
  AnyRes as LLaVA-OneVision) to `out`,
  with the tokenizer the model was trained with and its chat format as a chat template."""
  kind = config.model.kind
  if kind == 'vqgan':  # a diffusers VQModel: no tokenizer, no transformers config
    from radjax.convert import vqgan
    vqgan.save_dir(out, factory.part_config(config.model, 'vqgan'), params, hf_io.DTYPES[dtype])
    return
  tok_path = _tokenizer_path(config)
  fmt = chat.get_format(config.data.chat_format)
  tokenizer = None
  if tok_path and kind in ('vlm', 'llm'):
    tokenizer = chat.prepare_tokenizer(tokens.load_tokenizer(tok_path), fmt, kind == 'vlm',
                                       config.data.get('image_delimiters', False),
                                       config.data.get('codebook_size', 0))
    rows = config.model.llm.vocab_size
    if len(tokenizer) > rows:  # HF's forward would index past the embedding
      raise ConversionError(
          f'the tokenizer has {len(tokenizer)} tokens with chat format {fmt.name!r}, the '
          f'model {rows} embedding rows (config.model.llm.vocab_size): not the tokenizer '
          'this model was trained with')
  # Without a tokenizer the ids are unknown: None, not transformers' class defaults (LLaMA's
  # 1/2), which generate() would stop at.
  extra = {}
  if kind in ('vlm', 'llm'):
    extra = (_token_fields(tokenizer, fmt, config.eval.get('stop_tokens', ())) if tokenizer
             else dict.fromkeys(('bos_token_id', 'eos_token_id', 'pad_token_id')))
  if kind == 'vlm':
    if config.data.get('image_delimiters', False):
      raise ConversionError('config.data.image_delimiters=True wraps each image in '
                            '<image_begin>/<image_end>, which a Llava processor does not '
                            'write, so the export would not give the same logits')
    from radjax.convert import blip2, llava
    image_id = tokenizer.convert_tokens_to_ids(chat.IMAGE_MARK) if tokenizer else None
    vlm_cfg = factory.vlm_config(config.model, image_id)
    # A Q-Former VLM (XrayGPT) is a BLIP-2; an MLP projector's a Llava.
    layout = blip2 if vlm_cfg.projector.kind == 'qformer' else llava
    hf_cfg = layout.hf_config_from_vlm(vlm_cfg, export_family(vlm_cfg.llm), **extra)
    state_dict = layout.hf_from_params(params, vlm_cfg)
  elif kind in factory.PARTS:
    cfg = factory.part_config(config.model, kind)
    hf_cfg, state_dict = parts.to_hf(kind, cfg, params, **extra)
  else:
    raise ConversionError(f'config.model.kind={kind!r} is not one of vlm, '
                          f'{", ".join(factory.PARTS)}')
  hf_io.save_hf_dir(out, hf_cfg, state_dict, dtype)
  if kind in ('vision', 'projector'):
    return
  if tokenizer is None:
    logging.warning('no tokenizer found (config.data.tokenizer / data.dir); exported weights '
                    'only, with no bos/eos/pad ids in config.json')
    return
  if kind == 'vlm' and vlm_cfg.projector.kind == 'qformer':
    _save_blip2_inputs(out, tokenizer, fmt, config, vlm_cfg)
  else:
    _save_inputs(out, tokenizer, fmt, config, vlm_cfg if kind == 'vlm' else None)
  # A format that ends its turns with a string (vicuna's '###'): HF stops there too, given
  # the tokenizer (`generate(..., tokenizer=tokenizer)`).
  stop_strings = list(dict.fromkeys((*fmt.stop_strings,
                                     *config.eval.get('stop_strings', ()))))
  # Ids radjax never generates (an image token, embedding rows past the tokenizer): HF's
  # greedy pick could otherwise be one, and the reports would part.
  suppress = chat.never_generated(tokenizer, config.model.llm.vocab_size, kind == 'vlm')
  _write_generation_config(out, {**extra, 'stop_strings': stop_strings or None,
                                 'suppress_tokens': list(suppress) or None,
                                 **decoding_fields(config.eval)})


def _save_inputs(out: str, tokenizer, fmt, config, vlm_cfg) -> None:
  """The tokenizer with the chat format as its template; a VLM's (vlm_cfg given) inside a
  Llava or LLaVA-OneVision processor."""
  from radjax.convert import llava
  kind = 'vlm' if vlm_cfg is not None else 'llm'
  # A processor encodes the rendered prompt with the tokenizer's own specials: a format
  # that starts without BOS (chatml, dolly) must not get one from a LLaMA tokenizer.
  if kind == 'vlm' and fmt.begin[:1] != (chat.BOS,) and _adds_bos(tokenizer):
    _no_bos_on_encode(tokenizer)
  tokenizer.chat_template = chat.chat_template(
      fmt, config.data.system_prompt, bos=not (kind == 'vlm' and _adds_bos(tokenizer)))
  if kind == 'vlm' and vlm_cfg.anyres_grids:
    llava.save_onevision_processor(out, tokenizer, vlm_cfg, tuple(config.data.image_mean),
                                   tuple(config.data.image_std), tokenizer.chat_template)
  elif kind == 'vlm':
    vision = vlm_cfg.vision
    llava.save_processor(out, tokenizer, vision.image_size, tuple(config.data.image_mean),
                         tuple(config.data.image_std), vlm_cfg.tokens_per_image, vision.variant,
                         tokenizer.chat_template)
  else:
    if fmt.begin[:1] == (chat.BOS,):
      _add_bos_on_encode(tokenizer)
    tokenizer.save_pretrained(out)


def _save_blip2_inputs(out: str, tokenizer, fmt, config, vlm_cfg) -> None:
  """What a BLIP-2 export reads its inputs with: the tokenizer, whose chat template writes
  each image as num_queries `<image>` tokens where radjax puts them (BLIP-2's processor
  would prepend them), and a BLIP image processor doing radjax's eval preprocessing."""
  import transformers

  from radjax.convert import llava
  if fmt.begin[:1] == (chat.BOS,):
    _add_bos_on_encode(tokenizer)
  tokenizer.chat_template = chat.chat_template(
      fmt, config.data.system_prompt, image_tokens=vlm_cfg.projector.num_queries)
  tokenizer.save_pretrained(out)
  transformers.BlipImageProcessorPil(**llava.image_kwargs(
      vlm_cfg.vision.image_size, config.data.image_mean, config.data.image_std)
  ).save_pretrained(out)


def _adds_bos(tokenizer) -> bool:
  return (tokenizer.bos_token_id is not None
          and tokenizer('x')['input_ids'][:1] == [tokenizer.bos_token_id])


def _add_bos_on_encode(tokenizer) -> None:
  """`tokenizer(text)` starts with BOS, as radjax starts every sequence of this chat format
  and as HF's LLaMA tokenizers do (apply_chat_template encodes without it, so its BOS
  stays single)."""
  bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
  if bos is None or _adds_bos(tokenizer):
    return
  from tokenizers import processors
  tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=f'{bos} $A', pair=f'{bos} $A {bos} $B', special_tokens=[(bos, bos_id)])


def decoding_fields(ev) -> dict:
  """config.eval's decoding as HF's generation_config fields, so `generate(**inputs)`
  decodes as radjax's eval does (without them HF stops at 20 new tokens, greedy)."""
  out = {'max_new_tokens': ev.max_new_tokens, 'repetition_penalty': ev.repetition_penalty}
  if ev.decoding == 'sample' and ev.temperature > 0:  # temperature 0 samples greedily
    # top_k 0 is off in both; HF's own default would be 50.
    out.update(do_sample=True, temperature=ev.temperature, top_k=ev.top_k, top_p=ev.top_p)
  elif ev.decoding == 'beam':
    # as generation reads it: 'True', 'FALSE' or a bool are config.eval's values too
    out.update(num_beams=ev.num_beams, length_penalty=ev.length_penalty,
               early_stopping=config_checks.early_stopping(ev.early_stopping))
  return out


def _no_bos_on_encode(tokenizer) -> None:
  """`tokenizer(text)` adds no BOS, saved so (tokenizer_config's add_bos_token too, which
  a LLaMA tokenizer rebuilds its post-processor from when loaded)."""
  if hasattr(tokenizer, 'add_bos_token'):
    tokenizer.add_bos_token = False
  from tokenizers import processors
  tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single='$A', pair='$A $B', special_tokens=[])


def _write_generation_config(out: str, token_fields: dict) -> None:
  fields = {k: v for k, v in token_fields.items() if v is not None}
  with open(os.path.join(out, 'generation_config.json'), 'w') as f:
    json.dump({'do_sample': False, **fields}, f, indent=1)
