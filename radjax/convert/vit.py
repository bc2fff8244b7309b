"""CLIP / SigLIP / EVA vision towers <-> HF `CLIPVisionModel` / `SiglipVisionModel` /
`Blip2VisionModel` (EVA ViT-g of BLIP-2, MiniGPT-4, XrayGPT).

Every layer is converted, whatever `select_layer` is (the forward just stops early).
CLIP/SigLIP names are written in the layout every transformers version loads:
`vision_model.` + the module path (transformers 5 itself saves them without the
prefix; both are read). EVA is written as `Blip2VisionModel` saves it (no prefix); a
`Blip2ForConditionalGeneration` holds the same names under `vision_model.`.
EVA's fused `self_attn.qkv` is split into q/k/v before the table and fused after it.
"""
import dataclasses
import functools
import re

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from radjax.convert import common
from radjax.convert.common import Rule
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import vit
from radjax.models.runtime import Runtime

PREFIX = 'vision_model.'
# HF model_type -> (our variant, the only hidden_act our blocks compute for it)
_VARIANTS = {'clip_vision_model': ('clip', 'quick_gelu'),
             'siglip_vision_model': ('siglip', 'gelu_pytorch_tanh'),
             'blip_2_vision_model': ('eva', 'gelu')}
BLIP2_TYPES = ('blip-2',)  # whole BLIP-2 models whose `vision_model` is an EVA tower

_L = 'encoder.layers.{i}.'
RULES = (
    Rule('patch_embed/kernel', 'embeddings.patch_embedding.weight', 'conv'),
    Rule('patch_embed/bias', 'embeddings.patch_embedding.bias', 'identity', 'siglip'),
    Rule('class_embed', 'embeddings.class_embedding', 'identity', 'clip'),
    Rule('pos_embed', 'embeddings.position_embedding.weight', 'identity'),
    Rule('pre_norm/scale', 'pre_layrnorm.weight', 'identity', 'clip'),
    Rule('pre_norm/bias', 'pre_layrnorm.bias', 'identity', 'clip'),
    Rule('layers_{i}/norm1/scale', _L + 'layer_norm1.weight', 'identity'),
    Rule('layers_{i}/norm1/bias', _L + 'layer_norm1.bias', 'identity'),
    Rule('layers_{i}/q/kernel', _L + 'self_attn.q_proj.weight', 'qkv'),
    Rule('layers_{i}/q/bias', _L + 'self_attn.q_proj.bias', 'qkv_bias'),
    Rule('layers_{i}/k/kernel', _L + 'self_attn.k_proj.weight', 'qkv'),
    Rule('layers_{i}/k/bias', _L + 'self_attn.k_proj.bias', 'qkv_bias'),
    Rule('layers_{i}/v/kernel', _L + 'self_attn.v_proj.weight', 'qkv'),
    Rule('layers_{i}/v/bias', _L + 'self_attn.v_proj.bias', 'qkv_bias'),
    Rule('layers_{i}/o/kernel', _L + 'self_attn.out_proj.weight', 'o'),
    Rule('layers_{i}/o/bias', _L + 'self_attn.out_proj.bias', 'identity'),
    Rule('layers_{i}/norm2/scale', _L + 'layer_norm2.weight', 'identity'),
    Rule('layers_{i}/norm2/bias', _L + 'layer_norm2.bias', 'identity'),
    Rule('layers_{i}/fc1/kernel', _L + 'mlp.fc1.weight', 'linear'),
    Rule('layers_{i}/fc1/bias', _L + 'mlp.fc1.bias', 'identity'),
    Rule('layers_{i}/fc2/kernel', _L + 'mlp.fc2.weight', 'linear'),
    Rule('layers_{i}/fc2/bias', _L + 'mlp.fc2.bias', 'identity'),
    Rule('post_norm/scale', 'post_layernorm.weight', 'identity'),
    Rule('post_norm/bias', 'post_layernorm.bias', 'identity'),
)
# EVA (Blip2VisionModel). The `[q]`/`[k]`/`[v]` names are the slices of the fused qkv
# tensors (`_split_qkv`); its bias has no `[k]` (EVA has none: see radjax/models/vit.py).
EVA_RULES = (
    Rule('patch_embed/kernel', 'embeddings.patch_embedding.weight', 'conv'),
    Rule('patch_embed/bias', 'embeddings.patch_embedding.bias', 'identity'),
    Rule('class_embed', 'embeddings.class_embedding', 'class_embedding'),
    Rule('pos_embed', 'embeddings.position_embedding', 'position_embedding'),
    Rule('layers_{i}/norm1/scale', _L + 'layer_norm1.weight', 'identity'),
    Rule('layers_{i}/norm1/bias', _L + 'layer_norm1.bias', 'identity'),
    Rule('layers_{i}/q/kernel', _L + 'self_attn.qkv.weight[q]', 'qkv'),
    Rule('layers_{i}/q/bias', _L + 'self_attn.qkv.bias[q]', 'qkv_bias'),
    Rule('layers_{i}/k/kernel', _L + 'self_attn.qkv.weight[k]', 'qkv'),
    Rule('layers_{i}/v/kernel', _L + 'self_attn.qkv.weight[v]', 'qkv'),
    Rule('layers_{i}/v/bias', _L + 'self_attn.qkv.bias[v]', 'qkv_bias'),
    Rule('layers_{i}/o/kernel', _L + 'self_attn.projection.weight', 'o'),
    Rule('layers_{i}/o/bias', _L + 'self_attn.projection.bias', 'identity'),
    *(r for r in RULES if r.ours.startswith(('layers_{i}/norm2/', 'layers_{i}/fc'))),
    Rule('post_norm/scale', 'post_layernorm.weight', 'identity'),
    Rule('post_norm/bias', 'post_layernorm.bias', 'identity'),
)
_QKV = ('self_attn.qkv.weight', 'self_attn.qkv.bias')
# position_ids is a non-persistent buffer older checkpoints carry. SigLIP's `head.*` is
# the attention-pooling head of the contrastive objective: VLMs (and radjax) read patch
# features only, so it is dropped on import and exported as `vision_use_head=False`.
_IGNORED = {'clip': r'embeddings\.position_ids', 'siglip': r'embeddings\.position_ids|head\..+',
            'eva': r'(?!)'}

# torch Conv2d weight is (out, in, h, w); flax Conv kernel is (h, w, in, out).
CONV = common.Transform(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))
# Blip2VisionEmbeddings keeps a batch axis on both: (1, 1, E) and (1, positions, E).
CLASS_EMBEDDING = common.Transform(lambda w: w.reshape(w.shape[-1]), lambda c: c.reshape(1, 1, -1))
POSITION_EMBEDDING = common.Transform(lambda w: w[0], lambda p: p[None])


def vit_config_from_hf(hf, **overrides) -> vit.ViTConfig:
  """ViTConfig for an HF CLIP/SigLIP vision config; `overrides` set the fields HF does not
  have (select_layer, keep_class_token)."""
  model_type = getattr(hf, 'model_type', None)
  if model_type not in _VARIANTS:
    raise UnsupportedConfig(f'HF config field model_type={model_type!r} is not supported; '
                            f'expected one of {sorted(_VARIANTS)}')
  variant, act = _VARIANTS[model_type]
  if variant == 'eva' and not hf.qkv_bias:
    raise UnsupportedConfig('HF config field qkv_bias=False is not supported for '
                            'blip_2_vision_model (EVA has q and v biases)')
  if hf.hidden_act != act:
    raise UnsupportedConfig(f'HF config field hidden_act={hf.hidden_act!r} is not supported '
                            f'for {model_type} (radjax computes {act!r})')
  if hf.hidden_size % hf.num_attention_heads:
    raise UnsupportedConfig(f'HF config field num_attention_heads={hf.num_attention_heads} '
                            f'does not divide hidden_size={hf.hidden_size}')
  cfg = vit.ViTConfig(
      variant=variant, image_size=hf.image_size, patch_size=hf.patch_size,
      embed_dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads, mlp_dim=hf.intermediate_size,
      num_channels=getattr(hf, 'num_channels', 3), norm_eps=float(hf.layer_norm_eps),
      keep_class_token=variant == 'eva')  # BLIP-2's Q-Former reads the CLS token too
  return dataclasses.replace(cfg, **overrides)


def hf_config_from_vit(cfg: vit.ViTConfig, **extra):
  """`CLIPVisionConfig`, `SiglipVisionConfig` or `Blip2VisionConfig` for `cfg`; `extra`
  passes through."""
  import transformers
  kwargs = dict(hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size,
                layer_norm_eps=cfg.norm_eps)
  if cfg.variant == 'eva':
    if cfg.num_channels != 3:  # Blip2VisionEmbeddings hard-codes RGB
      raise UnsupportedConfig(f'config.model.vision.num_channels={cfg.num_channels} has no '
                              'Blip2VisionModel equivalent (3 channels only)')
    kwargs.update(hidden_act='gelu', qkv_bias=True, **extra)
    return transformers.Blip2VisionConfig(architectures=['Blip2VisionModel'], **kwargs)
  kwargs.update(num_channels=cfg.num_channels)
  if cfg.variant == 'clip':
    cls, arch = transformers.CLIPVisionConfig, 'CLIPVisionModel'
    kwargs.update(hidden_act='quick_gelu')
  else:
    cls, arch = transformers.SiglipVisionConfig, 'SiglipVisionModel'
    kwargs.update(hidden_act='gelu_pytorch_tanh', vision_use_head=False)
  kwargs.update(extra)
  return cls(architectures=[arch], **kwargs)


def _rules(cfg: vit.ViTConfig):
  if cfg.variant == 'eva':
    return list(EVA_RULES)
  return [r for r in RULES if r.when is None or r.when == cfg.variant]


def _transforms(cfg: vit.ViTConfig) -> dict:
  h, d = cfg.num_heads, cfg.embed_dim // cfg.num_heads
  return {'identity': common.IDENTITY, 'linear': common.LINEAR, 'conv': CONV,
          'qkv': common.linear_out_heads(h, d), 'qkv_bias': common.bias_heads(h, d),
          'o': common.linear_in_heads(h, d), 'class_embedding': CLASS_EMBEDDING,
          'position_embedding': POSITION_EMBEDDING}


def _split_qkv(state_dict: dict) -> dict:
  """EVA's fused `qkv.weight` (3E, E) -> `qkv.weight[q|k|v]`, `qkv.bias` (3E,) ->
  `qkv.bias[q|v]`. The bias's k third is dropped: HF keeps it (zeros in every converted
  checkpoint), but it cannot change the output (radjax/models/vit.py)."""
  out = {}
  for name, value in state_dict.items():
    if not name.endswith(_QKV):
      out[name] = value
      continue
    value = np.asarray(value)
    if value.shape[0] % 3:
      raise common.ConversionError(f'HF tensor {name!r} has shape {value.shape}; a fused qkv '
                                   'needs a first axis divisible by 3')
    q, k, v = np.split(value, 3)
    out[f'{name}[q]'], out[f'{name}[v]'] = q, v
    if name.endswith('weight'):
      out[f'{name}[k]'] = k
  return out


def _fuse_qkv(state_dict: dict) -> dict:
  """Inverse of `_split_qkv`; the bias gets a zero k third, as HF builds it."""
  out, parts = {}, {}
  for name, value in state_dict.items():
    if name.endswith(']') and name[:-3].endswith(_QKV):
      parts.setdefault(name[:-3], {})[name[-2]] = value
    else:
      out[name] = value
  for name, p in parts.items():
    k = p['k'] if 'k' in p else np.zeros_like(p['q'])
    out[name] = np.concatenate([p['q'], k, p['v']])
  return out


@functools.lru_cache(maxsize=16)
def param_shapes(cfg: vit.ViTConfig, scan: bool) -> dict:
  """Flat {path: shape} of `ViT(cfg)` params in the given layout (nothing allocated)."""
  images = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels))
  return common.shapes_of(vit.ViT(cfg, Runtime(scan_layers=scan)), images)


def _with_prefix(state_dict: dict, prefix: str) -> dict:
  """Every name as `prefix + module path`, whether or not the checkpoint wrote the prefix."""
  out = {}
  for name, v in state_dict.items():
    full = name if name.startswith(prefix) else prefix + name
    if full in out:
      raise common.ConversionError(f'HF tensor {full!r} appears with and without the '
                                   f'{prefix!r} prefix')
    out[full] = v
  return out


def params_from_hf(state_dict: dict, cfg: vit.ViTConfig, scan: bool,
                   prefix: str = PREFIX) -> dict:
  """HF vision state dict -> radjax f32 ViT params tree. Names may carry `prefix` or not."""
  rules = [dataclasses.replace(r, hf=prefix + r.hf) for r in _rules(cfg)]
  state_dict = _with_prefix(state_dict, prefix)
  if cfg.variant == 'eva':
    state_dict = _split_qkv(state_dict)
  flat = common.to_ours(state_dict, rules, _transforms(cfg),
                        param_shapes(cfg, scan), cfg.num_layers, scan,
                        ignore=f'^{re.escape(prefix)}({_IGNORED[cfg.variant]})$')
  return common.unflatten(flat)


def hf_from_params(params: dict, cfg: vit.ViTConfig, prefix: str | None = None) -> dict:
  """radjax ViT params tree (scanned or not; 'params' wrapper optional) -> HF state dict.
  `prefix` defaults to the standalone HF model's: PREFIX, or '' for EVA."""
  if prefix is None:
    prefix = '' if cfg.variant == 'eva' else PREFIX
  if set(params) == {'params'}:
    params = params['params']
  flat = common.flatten(nn.meta.unbox(params))
  scan = any(p.startswith(common.SCANNED_PREFIX) for p in flat)
  rules = [dataclasses.replace(r, hf=prefix + r.hf) for r in _rules(cfg)]
  out = common.to_hf(flat, rules, _transforms(cfg), param_shapes(cfg, scan), cfg.num_layers)
  return _fuse_qkv(out) if cfg.variant == 'eva' else out


def vision_part(hf, state_dict: dict):
  """(vision config, vision tensors) of an HF CLIP/SigLIP/BLIP-2 vision tower, of a whole
  contrastive `CLIPModel` / `SiglipModel` (its text tower and projections are dropped) or
  of a BLIP-2 model (its Q-Former and language model are dropped)."""
  model_type = getattr(hf, 'model_type', None)
  if model_type in _VARIANTS:
    return hf, state_dict
  if model_type in ('clip', 'siglip', *BLIP2_TYPES):
    return hf.vision_config, {k: v for k, v in state_dict.items() if k.startswith(PREFIX)}
  raise UnsupportedConfig(f'HF config field model_type={model_type!r} is not a '
                          'CLIP/SigLIP/BLIP-2 vision tower')
