"""radjax VLM <-> HF `LlavaForConditionalGeneration` (config, weights and processor), and
HF `LlavaOnevisionForConditionalGeneration` -> radjax VLM (import only; see `ONEVISION`).

The tensors are converted by the tower tables (radjax.convert.vit for the vision
tower, radjax.convert.llm_families for the decoder) plus the two projector linears.
Checkpoints name the towers in several ways (transformers 5 in memory:
`model.language_model.*`, `model.vision_tower.*`, `lm_head.weight`; saved by
transformers 5 and on the hub: `language_model.model.*`, `language_model.lm_head.weight`,
`vision_tower[.vision_model].*`); all are read. Export writes the hub layout
(`vision_tower.vision_model.*`, `multi_modal_projector.*`, `language_model.model.*`,
`language_model.lm_head.weight`), which every transformers version with Llava loads.

LLaVA-OneVision holds Llava's three parts under the same names plus `image_newline`, the
learned vector its AnyRes packing appends after each row of tiles (and after a lone
tile). It imports whole: AnyRes's grids (image_grid_pinpoints / image_size) and
anyres_max_N (vision_aspect_ratio) become config.model.anyres_grids / anyres_max_tiles and
`image_newline` the projector's (radjax/data/anyres.py); a VLM with AnyRes exports as
LLaVA-OneVision, one without as Llava. A part taken into a VLM without AnyRes
(init_from) leaves the vector out and says so (`onevision_note`).
"""
import dataclasses
import functools
import math
import re

import flax.linen as nn
import jax.numpy as jnp

from radjax.convert import common, hf_config, llm_families
from radjax.convert import vit as vit_convert
from radjax.convert.common import ConversionError, Rule
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import projector as projector_lib
from radjax.models import registry, vlm

VISION_PREFIX = 'vision_tower.vision_model.'
PROJECTOR_PREFIX = 'multi_modal_projector.'
# Per HF text model_type: (base-model prefix, head) in its standalone *ForCausalLM naming,
# which is what the decoder tables in radjax.convert read and write.
_TEXT_NAMES = {'llama': ('model.', 'lm_head.weight'), 'qwen2': ('model.', 'lm_head.weight'),
               'gpt_neox': ('gpt_neox.', 'embed_out.weight')}
_TOKEN_FIELDS = ('bos_token_id', 'eos_token_id', 'pad_token_id')
ONEVISION = 'llava_onevision'  # the HF model_type
_IMAGE_NEWLINE = ('image_newline', 'model.image_newline')  # saved / in-memory name

PROJECTOR_RULES = (
    Rule('fc1/kernel', PROJECTOR_PREFIX + 'linear_1.weight', 'linear'),
    Rule('fc1/bias', PROJECTOR_PREFIX + 'linear_1.bias', 'identity'),
    Rule('fc2/kernel', PROJECTOR_PREFIX + 'linear_2.weight', 'linear'),
    Rule('fc2/bias', PROJECTOR_PREFIX + 'linear_2.bias', 'identity'),
)
NEWLINE_RULE = Rule('image_newline', _IMAGE_NEWLINE[0], 'identity')
_ANYRES_MAX = 'anyres_max_'


def _projector_rules(cfg) -> tuple:
  return PROJECTOR_RULES + ((NEWLINE_RULE,) if cfg.image_newline else ())


def _anyres_from_hf(hf) -> dict:
  """VLMConfig's AnyRes fields of a LLaVA-OneVision config (nothing for a Llava)."""
  if getattr(hf, 'model_type', None) != ONEVISION:
    return {}
  tile, ratio = hf.vision_config.image_size, hf.vision_aspect_ratio
  grids = []
  for h, w in hf.image_grid_pinpoints:
    if h % tile or w % tile:
      raise UnsupportedConfig(f'HF config field image_grid_pinpoints: {[h, w]} is not a grid '
                              f'of {tile}px tiles')
    grids.append((h // tile, w // tile))
  if not ratio.startswith(_ANYRES_MAX) or not ratio[len(_ANYRES_MAX):].isdigit():
    raise UnsupportedConfig(f'HF config field vision_aspect_ratio={ratio!r} is not '
                            f"'{_ANYRES_MAX}N'")
  return dict(anyres_grids=tuple(grids), anyres_max_tiles=int(ratio[len(_ANYRES_MAX):]))
_PROJECTOR_TRANSFORMS = {'identity': common.IDENTITY, 'linear': common.LINEAR}


def vlm_config_from_hf(hf, **overrides) -> vlm.VLMConfig:
  """VLMConfig for an HF `LlavaConfig` or `LlavaOnevisionConfig`; `overrides` replace
  VLMConfig fields."""
  layer = hf.vision_feature_layer
  if not isinstance(layer, int):
    raise UnsupportedConfig(f'HF config field vision_feature_layer={layer!r} is not supported '
                            '(only a single layer)')
  strategy = hf.vision_feature_select_strategy
  variant = getattr(hf.vision_config, 'model_type', None)
  if strategy not in ('default', 'full') or (
      strategy == 'default' and variant == 'siglip_vision_model'):
    # 'default' drops token 0; SigLIP has no class token, so that would drop a patch.
    raise UnsupportedConfig(f'HF config field vision_feature_select_strategy={strategy!r} is '
                            f'not supported for {variant}')
  if hf.projector_hidden_act != 'gelu':
    raise UnsupportedConfig(f'HF config field projector_hidden_act={hf.projector_hidden_act!r}'
                            " is not supported (radjax's mlp projector uses exact 'gelu')")
  if not getattr(hf, 'multimodal_projector_bias', True):
    raise UnsupportedConfig('HF config field multimodal_projector_bias=False is not supported')
  vision = vit_convert.vit_config_from_hf(
      hf.vision_config, select_layer=layer,
      keep_class_token=variant == 'clip_vision_model' and strategy == 'full')
  llm = hf_config.llm_config_from_hf(hf.text_config)
  if getattr(hf, 'tie_word_embeddings', False):
    llm = dataclasses.replace(llm, tie_embeddings=True)
  anyres = _anyres_from_hf(hf)
  proj = projector_lib.ProjectorConfig(kind='mlp', in_dim=vision.embed_dim,
                                       out_dim=llm.embed_dim, image_newline=bool(anyres))
  cfg = vlm.VLMConfig(vision=vision, projector=proj, llm=llm, image_token_id=hf.image_token_id,
                      **anyres)
  return dataclasses.replace(cfg, **overrides)


def hf_config_from_vlm(cfg: vlm.VLMConfig, text_family: str, **extra):
  """`LlavaConfig` for `cfg`. bos/eos/pad token ids in `extra` go to the text config (where
  generation reads them) and the Llava config; everything else to the Llava config."""
  import transformers
  if cfg.projector.kind != 'mlp':
    raise UnsupportedConfig(f'config.model.projector.kind={cfg.projector.kind!r} has no Llava '
                            "equivalent (Llava's projector is 'mlp')")
  if cfg.vision.variant not in ('clip', 'siglip'):  # Llava reads no post-norm (EVA's)
    raise UnsupportedConfig(f'config.model.vision.variant={cfg.vision.variant!r} has no Llava '
                            "equivalent ('clip' or 'siglip')")
  tokens = {k: extra[k] for k in _TOKEN_FIELDS if k in extra}
  text = hf_config.hf_config_from_llm(cfg.llm, text_family, **tokens)
  full = cfg.vision.variant == 'siglip' or cfg.vision.keep_class_token
  kwargs = dict(
      vision_config=vit_convert.hf_config_from_vit(cfg.vision), text_config=text,
      image_token_index=cfg.image_token_id,
      projector_hidden_act='gelu', multimodal_projector_bias=True,
      vision_feature_select_strategy='full' if full else 'default',
      vision_feature_layer=cfg.vision.select_layer, tie_word_embeddings=cfg.llm.tie_embeddings)
  kwargs.update(extra)
  if cfg.anyres_grids:
    if not cfg.anyres_max_tiles:
      raise UnsupportedConfig('config.model.anyres_max_tiles=0 (never scaled) has no '
                              "LLaVA-OneVision equivalent (vision_aspect_ratio 'anyres_max_N')")
    tile = cfg.vision.image_size
    return transformers.LlavaOnevisionConfig(
        architectures=['LlavaOnevisionForConditionalGeneration'],
        image_grid_pinpoints=[[r * tile, c * tile] for r, c in cfg.anyres_grids],
        vision_aspect_ratio=f'{_ANYRES_MAX}{cfg.anyres_max_tiles}', **kwargs)
  return transformers.LlavaConfig(architectures=['LlavaForConditionalGeneration'],
                                  image_seq_length=cfg.vision.num_tokens, **kwargs)


def onevision_note(hf) -> str:
  """What a projector without AnyRes leaves out when it starts from a LLaVA-OneVision."""
  return (f"LLaVA-OneVision's image_newline is left out: the projector has no AnyRes "
          f'(config.model.anyres_grids is empty, one tile per image); the import '
          f'(vision_aspect_ratio={hf.vision_aspect_ratio!r}) has it')


def _text_names(model_type: str) -> tuple[str, str]:
  if model_type not in _TEXT_NAMES:
    raise UnsupportedConfig(f'HF config field text_config.model_type={model_type!r} is not '
                            f'supported; expected one of {sorted(_TEXT_NAMES)}')
  return _TEXT_NAMES[model_type]


def _split(state_dict: dict, text_model_type: str) -> tuple[dict, dict, dict]:
  """(vision, projector, text) tensors; vision names as `VISION_PREFIX + module path`,
  text names as the standalone *ForCausalLM has them."""
  base, head = _text_names(text_model_type)
  parts, unknown = ({}, {}, {}), []
  for name, value in state_dict.items():
    key, new_layout = name, False
    if name in _IMAGE_NEWLINE:  # LLaVA-OneVision's; the projector's in radjax
      parts[1][_IMAGE_NEWLINE[0]] = value
      continue
    if key.startswith('model.') and key[6:].startswith(
        ('vision_tower.', 'multi_modal_projector.', 'language_model.')):
      key, new_layout = key[6:], True
    if key.startswith('vision_tower.'):
      rest = key[len('vision_tower.'):]
      part, key = 0, VISION_PREFIX + rest.removeprefix(vit_convert.PREFIX)
    elif key.startswith(PROJECTOR_PREFIX):
      part = 1
    elif key == 'lm_head.weight':
      part, key = 2, head
    elif key.startswith('language_model.'):
      rest, part = key[len('language_model.'):], 2
      if new_layout:  # model.language_model.X: X is the base model's own name
        key = base + rest
      elif rest in ('lm_head.weight', head):
        key = head
      elif rest.startswith('model.'):  # what transformers 5 writes for any text family
        key = base + rest[len('model.'):]
      else:  # older Llava checkpoints: the standalone *ForCausalLM names
        key = rest
    else:
      unknown.append(name)
      continue
    if key in parts[part]:
      raise ConversionError(f'HF tensor {name!r} appears twice under different prefixes')
    parts[part][key] = value
  if unknown:
    raise ConversionError(f'HF tensors not used by the conversion: {sorted(unknown)}')
  return parts


def tower_state_dict(hf, state_dict: dict, tower: str):
  """(HF config, tensors) of one Llava (or LLaVA-OneVision) tower in its standalone
  naming: 'vision' as `CLIPVisionModel`/`SiglipVisionModel`, 'llm' as the text
  *ForCausalLM."""
  vision, _, text = _split(state_dict, hf.text_config.model_type)
  if tower == 'vision':
    return hf.vision_config, {vit_convert.PREFIX + k[len(VISION_PREFIX):]: v
                              for k, v in vision.items()}
  if tower == 'llm':
    return hf.text_config, text
  raise ValueError(f"tower={tower!r} is not 'vision' or 'llm'")


@functools.lru_cache(maxsize=16)
def projector_shapes(cfg: projector_lib.ProjectorConfig) -> dict:
  return common.shapes_of(registry.module('projector', cfg), jnp.zeros((1, 1, cfg.in_dim)))


def _check_projector(cfg) -> None:
  if cfg.kind != 'mlp':
    raise ConversionError(f'projector kind {cfg.kind!r} has no Llava tensors')


def _text_error(e: ConversionError, family: str) -> ConversionError:
  base, head = _TEXT_NAMES[family]
  return ConversionError(f'language model: {e} (names as in the standalone model; in Llava '
                         f'{base}* is language_model.model.* and {head} is lm_head.weight)')


def projector_params_from_hf(state_dict: dict, cfg: projector_lib.ProjectorConfig,
                             text_family: str, drop_newline: bool = False,
                             skip: str = r'$^') -> dict:
  """Only the projector of an HF Llava state dict (e.g. stage-1 weights for stage 2), with
  a LLaVA-OneVision's image_newline where `cfg` has one; `drop_newline`: left out where
  `cfg` has none (init_from; the caller notes it), else that is an unused tensor. Params
  `skip` names (init_fresh) are left out (common.to_ours)."""
  _check_projector(cfg)
  _, proj, _ = _split(state_dict, text_family)
  if _IMAGE_NEWLINE[0] in proj and not cfg.image_newline and drop_newline:
    del proj[_IMAGE_NEWLINE[0]]
  elif (cfg.image_newline and _IMAGE_NEWLINE[0] not in proj
        and not re.fullmatch(skip, 'image_newline')):
    raise ConversionError('the projector has an image_newline (config.model.anyres_grids) '
                          'but the HF model has none (a Llava, not a LLaVA-OneVision)')
  return common.unflatten(common.to_ours(proj, _projector_rules(cfg), _PROJECTOR_TRANSFORMS,
                                         projector_shapes(cfg), 0, False, skip=skip))


def params_from_hf(state_dict: dict, cfg: vlm.VLMConfig, scan: bool) -> dict:
  """HF Llava state dict (any of the layouts above) -> radjax f32 VLM params tree."""
  _check_projector(cfg.projector)
  family = hf_config.export_family(cfg.llm)
  vision, proj, text = _split(state_dict, family)
  projector = projector_params_from_hf(proj, cfg.projector, family)
  try:
    llm_params = llm_families.params_from_hf(text, cfg.llm, scan)
  except ConversionError as e:
    raise _text_error(e, family) from e
  return {'vision': vit_convert.params_from_hf(vision, cfg.vision, scan, prefix=VISION_PREFIX),
          'projector': projector, 'llm': llm_params}


def hf_from_params(params: dict, cfg: vlm.VLMConfig) -> dict:
  """radjax VLM params tree (scanned or not; 'params' wrapper optional) -> HF Llava state
  dict in the hub layout."""
  if set(params) == {'params'}:
    params = params['params']
  params = nn.meta.unbox(params)
  _check_projector(cfg.projector)
  family = hf_config.export_family(cfg.llm)
  base, head = _TEXT_NAMES[family]
  missing = sorted({'vision', 'projector', 'llm'} - set(params))
  if missing:
    raise ConversionError(f'model params {missing} are missing')
  out = vit_convert.hf_from_params(params['vision'], cfg.vision, prefix=VISION_PREFIX)
  out.update(common.to_hf(common.flatten(params['projector']), _projector_rules(cfg.projector),
                          _PROJECTOR_TRANSFORMS,
                          projector_shapes(cfg.projector), 0))
  try:
    text = llm_families.hf_from_params(params['llm'], cfg.llm)
  except ConversionError as e:
    raise _text_error(e, family) from e
  for name, value in text.items():
    if name == head:
      out['language_model.lm_head.weight'] = value
    elif name.startswith(base):
      out['language_model.model.' + name[len(base):]] = value
    else:
      raise ConversionError(f'decoder tensor {name!r} is outside {base}*')
  return out


def _image_token_layout(image_size: int, num_image_tokens: int, variant: str,
                        patch_size: int | None) -> dict:
  """LlavaProcessor counts (size // patch)^2 + num_additional_image_tokens, minus one for
  the 'default' strategy; these settings make that `num_image_tokens`."""
  cls_tokens = {'clip': 1, 'siglip': 0}[variant]
  if patch_size is None:  # CLIP: n patches ('default') or n + 1 ('full'); SigLIP: n
    for patches in (num_image_tokens, num_image_tokens - cls_tokens):
      side = math.isqrt(max(patches, 0))
      if patches > 0 and side * side == patches and image_size % side == 0:
        patch_size = image_size // side
        break
    else:
      raise ValueError(f'num_image_tokens={num_image_tokens} is not a square patch grid of a '
                       f'{image_size}px {variant} image')
  patches = (image_size // patch_size) ** 2
  if num_image_tokens == patches:
    strategy = 'default' if cls_tokens else 'full'
  elif cls_tokens and num_image_tokens == patches + 1:
    strategy = 'full'
  else:
    raise ValueError(f'num_image_tokens={num_image_tokens} does not fit {patches} patches of '
                     f'a {variant} tower')
  return dict(patch_size=patch_size, num_additional_image_tokens=cls_tokens,
              vision_feature_select_strategy=strategy)


def save_processor(out_dir: str, tokenizer, image_size: int, mean, std,
                   num_image_tokens: int, variant: str, chat_template: str | None = None,
                   patch_size: int | None = None):
  """Writes a `LlavaProcessor` reproducing radjax's eval preprocessing and prompt layout.

  `tokenizer` is the (fast) tokenizer the model was trained with, `<image>` included;
  `<image>` expands to `num_image_tokens` placeholders. Images: RGB, resized to
  exactly (image_size, image_size) with PIL bicubic (no crop), /255, (x - mean) / std.
  High-bit-depth images (16-bit PNGs) must first go through
  `radjax.data.images.load_image` (or `to_8bit`), radjax's one depth rule; PIL's own
  conversion, which transformers uses, clips them to white.
  transformers picks its torchvision backend when torchvision is installed; pass
  `backend='pil'` to `from_pretrained` there for pixel-exact radjax preprocessing.
  """
  import transformers

  from radjax.data import chat
  cls = {'clip': transformers.CLIPImageProcessorPil,
         'siglip': transformers.SiglipImageProcessorPil}.get(variant)
  if cls is None:
    raise ValueError(f"variant={variant!r} is not 'clip' or 'siglip'")
  tokenizer = _image_tokenizer(tokenizer, chat_template)
  size = {'height': image_size, 'width': image_size}
  processor = transformers.LlavaProcessor(
      image_processor=cls(**image_kwargs(image_size, mean, std), crop_size=size,
                          do_center_crop=False),
      tokenizer=tokenizer, chat_template=chat_template, image_token=chat.IMAGE_MARK,
      **_image_token_layout(image_size, num_image_tokens, variant, patch_size))
  processor.save_pretrained(out_dir)
  return processor


def _image_tokenizer(tokenizer, chat_template: str | None):
  """The (fast) tokenizer as a processor's: `<image>` its image_token."""
  import transformers

  from radjax.data import chat
  if chat.IMAGE_MARK not in tokenizer.get_vocab() or tokenizer.eos_token is None:
    raise ValueError(f'the tokenizer lacks {chat.IMAGE_MARK} or an EOS token')
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer.backend_tokenizer, bos_token=tokenizer.bos_token,
      eos_token=tokenizer.eos_token, pad_token=tokenizer.pad_token,
      unk_token=tokenizer.unk_token, extra_special_tokens={'image_token': chat.IMAGE_MARK})
  if chat_template is not None:
    tokenizer.chat_template = chat_template
  return tokenizer


def image_kwargs(image_size: int, mean, std) -> dict:
  """radjax's eval preprocessing as an HF image processor's settings: RGB, PIL bicubic to
  image_size (no crop), /255, (x - mean) / std."""
  return dict(do_resize=True, size={'height': image_size, 'width': image_size},
              resample=3,  # PIL.Image.BICUBIC
              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
              image_mean=list(mean)[:3], image_std=list(std)[:3], do_convert_rgb=True)


def save_onevision_processor(out_dir: str, tokenizer, cfg: vlm.VLMConfig, mean, std,
                             chat_template: str | None = None) -> None:
  """Writes the files of a `LlavaOnevisionProcessor` reproducing radjax's AnyRes reads
  (radjax/data/anyres.py): its image processor (the grids as pinpoints, the tile size,
  bicubic, mean/std), `num_image_tokens` per tile, anyres_max_N, the tokenizer and chat
  template, and its video processor's settings. They are laid out as its save_pretrained
  lays them out; building one here would need torchvision for its video half, which
  loading it does too."""
  import json
  import os

  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
      LlavaOnevisionImageProcessorPil,
  )

  from radjax.data import chat
  tile = cfg.vision.image_size
  image = LlavaOnevisionImageProcessorPil(
      **image_kwargs(tile, mean, std),
      image_grid_pinpoints=[[r * tile, c * tile] for r, c in cfg.anyres_grids], do_pad=True)
  tokenizer = _image_tokenizer(tokenizer, chat_template)
  tokenizer.save_pretrained(out_dir)  # with chat_template.jinja
  # The video half AutoProcessor reads first: the image processor's settings (it needs
  # torchvision to be built, so it is written as save_pretrained writes it).
  video = {k: v for k, v in image.to_dict().items()
           if k in ('do_resize', 'size', 'resample', 'do_rescale', 'rescale_factor',
                    'do_normalize', 'image_mean', 'image_std', 'do_convert_rgb')}
  video['video_processor_type'] = 'LlavaOnevisionVideoProcessor'
  fields = dict(image_processor=image.to_dict(), video_processor=video,
                image_token=chat.IMAGE_MARK,
                video_token='<video>', num_image_tokens=cfg.vision.num_tokens,
                vision_aspect_ratio=f'{_ANYRES_MAX}{cfg.anyres_max_tiles}',
                vision_feature_select_strategy='full',
                processor_class='LlavaOnevisionProcessor')
  with open(os.path.join(out_dir, 'processor_config.json'), 'w') as f:
    json.dump(fields, f, indent=2)

