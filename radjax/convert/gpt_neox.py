"""GPT-NeoX decoder (dolly-v2, used by LLM-CXR) <-> HF `GPTNeoXForCausalLM` weights.

HF fuses q/k/v into `attention.query_key_value`, laid out per head as
[heads, (q, k, v), head_size]. It is split into three pseudo-tensors before the
table engine runs and fused back after it, so every rule stays one-to-one.
"""
import flax.linen as nn
import numpy as np

from radjax.convert import common
from radjax.convert.common import Rule
from radjax.convert.llama import param_shapes
from radjax.models import llm

__all__ = ['RULES', 'hf_from_params', 'param_shapes', 'params_from_hf']

_L = 'gpt_neox.layers.{i}.'
_QKV = 'attention.query_key_value.'
_PARTS = ('q', 'k', 'v')
RULES = (
    Rule('embedder/embedding', 'gpt_neox.embed_in.weight', 'identity'),
    Rule('layers_{i}/attn_norm/scale', _L + 'input_layernorm.weight', 'identity'),
    Rule('layers_{i}/attn_norm/bias', _L + 'input_layernorm.bias', 'identity'),
    *(Rule(f'layers_{{i}}/attn/{p}/kernel', f'{_L}{_QKV}weight[{p}]', 'qkv') for p in _PARTS),
    *(Rule(f'layers_{{i}}/attn/{p}/bias', f'{_L}{_QKV}bias[{p}]', 'qkv_bias') for p in _PARTS),
    Rule('layers_{i}/attn/o/kernel', _L + 'attention.dense.weight', 'o'),
    Rule('layers_{i}/attn/o/bias', _L + 'attention.dense.bias', 'identity'),
    Rule('layers_{i}/mlp_norm/scale', _L + 'post_attention_layernorm.weight', 'identity'),
    Rule('layers_{i}/mlp_norm/bias', _L + 'post_attention_layernorm.bias', 'identity'),
    Rule('layers_{i}/mlp/up/kernel', _L + 'mlp.dense_h_to_4h.weight', 'linear'),
    Rule('layers_{i}/mlp/up/bias', _L + 'mlp.dense_h_to_4h.bias', 'identity'),
    Rule('layers_{i}/mlp/down/kernel', _L + 'mlp.dense_4h_to_h.weight', 'linear'),
    Rule('layers_{i}/mlp/down/bias', _L + 'mlp.dense_4h_to_h.bias', 'identity'),
    Rule('final_norm/scale', 'gpt_neox.final_layer_norm.weight', 'identity'),
    Rule('final_norm/bias', 'gpt_neox.final_layer_norm.bias', 'identity'),
    Rule('lm_head/kernel', 'embed_out.weight', 'linear', 'untied'),
)
# Non-persistent buffers (causal mask, RoPE) that older checkpoints still carry.
IGNORED_HF = r'(attention\.(bias|masked_bias)|rotary_emb\.inv_freq)$'
_HEAD, _EMBED = 'embed_out.weight', 'gpt_neox.embed_in.weight'
_HEAD_V5 = 'lm_head.weight'  # the in-memory name in transformers v5


def _check(cfg: llm.LLMConfig) -> None:
  want = dict(norm='layer', mlp='plain', linear_bias=True, qkv_bias=True,
              num_kv_heads=cfg.num_heads)
  for field, value in want.items():
    if getattr(cfg, field) != value:
      raise common.ConversionError(f'GPT-NeoX weights need LLMConfig field {field}={value!r}, '
                                   f'got {getattr(cfg, field)!r}')


def _rules(cfg: llm.LLMConfig):
  return [r for r in RULES if r.when is None or not cfg.tie_embeddings]


def _transforms(cfg: llm.LLMConfig) -> dict:
  h, d = cfg.num_heads, cfg.dim_per_head
  return {'identity': common.IDENTITY, 'linear': common.LINEAR,
          'qkv': common.linear_out_heads(h, d), 'qkv_bias': common.bias_heads(h, d),
          'o': common.linear_in_heads(h, d)}


def _split_qkv(sd: dict, cfg: llm.LLMConfig) -> dict:
  """Replaces each fused query_key_value weight/bias by q/k/v pseudo-tensors."""
  h, d, e = cfg.num_heads, cfg.dim_per_head, cfg.embed_dim
  out = {}
  for name, arr in sd.items():
    kind = name.rsplit('.', 1)[-1]
    if _QKV not in name or kind not in ('weight', 'bias'):
      out[name] = arr
      continue
    arr = np.asarray(arr)
    want = (3 * h * d, e) if kind == 'weight' else (3 * h * d,)
    if arr.shape != want:
      raise common.ConversionError(f'HF tensor {name!r} has shape {arr.shape}, expected '
                                   f'{want} (fused q/k/v of {h} heads x {d})')
    per_head = arr.reshape(h, 3, d, *arr.shape[1:])
    for j, p in enumerate(_PARTS):
      out[f'{name}[{p}]'] = per_head[:, j].reshape(h * d, *arr.shape[1:])
  return out


def _fuse_qkv(sd: dict, cfg: llm.LLMConfig) -> dict:
  h = cfg.num_heads
  out = {}
  for name, arr in sd.items():
    if not name.endswith(']'):
      out[name] = arr
      continue
    fused = name[:name.index('[')]
    if fused in out:
      continue
    parts = [sd[f'{fused}[{p}]'] for p in _PARTS]
    stacked = np.stack([p.reshape(h, -1, *p.shape[1:]) for p in parts], axis=1)
    out[fused] = np.ascontiguousarray(stacked.reshape(-1, *parts[0].shape[1:]))
  return out


def params_from_hf(state_dict: dict, cfg: llm.LLMConfig, scan: bool) -> dict:
  """HF state dict (name -> numpy) -> radjax f32 params tree (the value under 'params')."""
  _check(cfg)
  sd = dict(state_dict)
  if _HEAD_V5 in sd:
    if _HEAD in sd:
      raise common.ConversionError(f'HF tensors {_HEAD!r} and {_HEAD_V5!r} are both present')
    sd[_HEAD] = sd.pop(_HEAD_V5)
  if cfg.tie_embeddings and _HEAD in sd:
    # Some tied checkpoints store the head anyway; accept it only if it is the tie.
    head, emb = sd.pop(_HEAD), sd.get(_EMBED)
    if emb is None or head.shape != emb.shape or (head != emb).any():
      raise common.ConversionError(f'HF tensor {_HEAD!r} differs from {_EMBED!r} but the '
                                   'config ties them')
  flat = common.to_ours(_split_qkv(sd, cfg), _rules(cfg), _transforms(cfg),
                        param_shapes(cfg, scan), cfg.num_layers, scan, ignore=IGNORED_HF)
  return common.unflatten(flat)


def hf_from_params(params: dict, cfg: llm.LLMConfig) -> dict:
  """radjax params tree (scanned or not; 'params' wrapper optional) -> HF state dict
  with the checkpoint names (`embed_out.weight`, fused `query_key_value`)."""
  _check(cfg)
  if set(params) == {'params'}:
    params = params['params']
  flat = common.flatten(nn.meta.unbox(params))
  scan = any(p.startswith(common.SCANNED_PREFIX) for p in flat)
  sd = common.to_hf(flat, _rules(cfg), _transforms(cfg), param_shapes(cfg, scan),
                    cfg.num_layers)
  return _fuse_qkv(sd, cfg)
