"""CLIP / SigLIP vision towers <-> HF `CLIPVisionModel` / `SiglipVisionModel`.

HF layers 0 .. layers_run-1 map to our stack `layers`, the rest (kept only so an
export is the whole tower) to `layers_unused`. Names are written in the layout every
transformers version loads: `vision_model.` + the module path (transformers 5 itself
saves them without the prefix; both are read).
"""
import dataclasses
import functools
import re

import flax.linen as nn
import jax.numpy as jnp

from radjax.convert import common
from radjax.convert.common import Rule
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import vit
from radjax.models.runtime import Runtime

PREFIX = 'vision_model.'
# HF model_type -> (our variant, the only hidden_act our blocks compute for it)
_VARIANTS = {'clip_vision_model': ('clip', 'quick_gelu'),
             'siglip_vision_model': ('siglip', 'gelu_pytorch_tanh')}

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
# position_ids is a non-persistent buffer older checkpoints carry. SigLIP's `head.*` is
# the attention-pooling head of the contrastive objective: VLMs (and radjax) read patch
# features only, so it is dropped on import and exported as `vision_use_head=False`.
_IGNORED = {'clip': r'embeddings\.position_ids', 'siglip': r'embeddings\.position_ids|head\..+'}

# torch Conv2d weight is (out, in, h, w); flax Conv kernel is (h, w, in, out).
CONV = common.Transform(lambda w: w.transpose(2, 3, 1, 0), lambda k: k.transpose(3, 2, 0, 1))


def vit_config_from_hf(hf, **overrides) -> vit.ViTConfig:
  """ViTConfig for an HF CLIP/SigLIP vision config; `overrides` set the fields HF does not
  have (select_layer, keep_class_token)."""
  model_type = getattr(hf, 'model_type', None)
  if model_type not in _VARIANTS:
    raise UnsupportedConfig(f'HF config field model_type={model_type!r} is not supported; '
                            f'expected one of {sorted(_VARIANTS)}')
  variant, act = _VARIANTS[model_type]
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
      num_channels=hf.num_channels, norm_eps=float(hf.layer_norm_eps))
  return dataclasses.replace(cfg, **overrides)


def hf_config_from_vit(cfg: vit.ViTConfig, **extra):
  """`CLIPVisionConfig` or `SiglipVisionConfig` for `cfg`; `extra` passes through."""
  import transformers
  kwargs = dict(hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
                num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                num_channels=cfg.num_channels, image_size=cfg.image_size,
                patch_size=cfg.patch_size, layer_norm_eps=cfg.norm_eps)
  if cfg.variant == 'clip':
    cls, arch = transformers.CLIPVisionConfig, 'CLIPVisionModel'
    kwargs.update(hidden_act='quick_gelu')
  else:
    cls, arch = transformers.SiglipVisionConfig, 'SiglipVisionModel'
    kwargs.update(hidden_act='gelu_pytorch_tanh', vision_use_head=False)
  kwargs.update(extra)
  return cls(architectures=[arch], **kwargs)


def _rules(cfg: vit.ViTConfig):
  return [r for r in RULES if r.when is None or r.when == cfg.variant]


def _transforms(cfg: vit.ViTConfig) -> dict:
  h, d = cfg.num_heads, cfg.embed_dim // cfg.num_heads
  return {'identity': common.IDENTITY, 'linear': common.LINEAR, 'conv': CONV,
          'qkv': common.linear_out_heads(h, d), 'qkv_bias': common.bias_heads(h, d),
          'o': common.linear_in_heads(h, d)}


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
  flat = common.to_ours(_with_prefix(state_dict, prefix), rules, _transforms(cfg),
                        param_shapes(cfg, scan), cfg.num_layers, scan,
                        ignore=f'^{re.escape(prefix)}({_IGNORED[cfg.variant]})$')
  return common.unflatten(flat)


def hf_from_params(params: dict, cfg: vit.ViTConfig, prefix: str = PREFIX) -> dict:
  """radjax ViT params tree (scanned or not; 'params' wrapper optional) -> HF state dict."""
  if set(params) == {'params'}:
    params = params['params']
  flat = common.flatten(nn.meta.unbox(params))
  scan = any(p.startswith(common.SCANNED_PREFIX) for p in flat)
  rules = [dataclasses.replace(r, hf=prefix + r.hf) for r in _rules(cfg)]
  return common.to_hf(flat, rules, _transforms(cfg), param_shapes(cfg, scan), cfg.num_layers)


def vision_part(hf, state_dict: dict):
  """(vision config, vision tensors) of an HF CLIP/SigLIP vision tower or of a whole
  contrastive `CLIPModel` / `SiglipModel` (its text tower and projections are dropped)."""
  model_type = getattr(hf, 'model_type', None)
  if model_type in _VARIANTS:
    return hf, state_dict
  if model_type in ('clip', 'siglip'):
    return hf.vision_config, {k: v for k, v in state_dict.items() if k.startswith(PREFIX)}
  raise UnsupportedConfig(f'HF config field model_type={model_type!r} is not a CLIP/SigLIP '
                          'vision tower')
