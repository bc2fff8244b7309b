"""HF `LlamaConfig` / `Qwen2Config` <-> radjax `LLMConfig`.

Anything the radjax decoder cannot reproduce exactly is an error naming the HF
field, so an import never silently changes the model's function.
"""
import dataclasses

from radjax.models.llm import LLMConfig

FAMILIES = ('llama', 'qwen2')
# HF hidden_act -> radjax activation (see radjax/models/layers.ACTIVATIONS).
_ACTS = {'silu': 'silu', 'swish': 'silu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
         'gelu_new': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}


class UnsupportedConfig(ValueError):
  """An HF config setting radjax cannot represent; the message names the field."""


def _rope_theta(hf) -> float:
  """rope_theta from v5 `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
  params = getattr(hf, 'rope_parameters', None)
  if params is None:
    scaling = getattr(hf, 'rope_scaling', None)
    if scaling and scaling.get('rope_type', scaling.get('type')) not in (None, 'default'):
      raise UnsupportedConfig(f'HF config field rope_scaling={scaling} is not supported')
    return float(getattr(hf, 'rope_theta', 10000.0))
  if 'full_attention' in params and isinstance(params['full_attention'], dict):
    raise UnsupportedConfig(f'HF config field rope_parameters={params} (per layer type) '
                            'is not supported')
  if params.get('rope_type', 'default') != 'default':
    raise UnsupportedConfig(f'HF config field rope_parameters.rope_type='
                            f'{params["rope_type"]!r} is not supported (only default RoPE)')
  if params.get('partial_rotary_factor', 1.0) != 1.0:
    raise UnsupportedConfig('HF config field rope_parameters.partial_rotary_factor is not '
                            'supported')
  return float(params.get('rope_theta', 10000.0))


def _require(hf, field: str, ok) -> None:
  value = getattr(hf, field, None)
  if not ok(value):
    raise UnsupportedConfig(f'HF config field {field}={value!r} is not supported for '
                            f'{hf.model_type}')


def llm_config_from_hf(hf, **overrides) -> LLMConfig:
  """LLMConfig for an HF llama/qwen2 config; `overrides` set radjax-only fields
  (dtype, scan_layers, attention_impl, ...)."""
  family = getattr(hf, 'model_type', None)
  if family not in FAMILIES:
    raise UnsupportedConfig(f'HF config field model_type={family!r} is not supported; '
                            f'expected one of {FAMILIES}')
  _require(hf, 'hidden_act', lambda v: v in _ACTS)
  if family == 'llama':
    # attention_bias adds an o_proj bias too, which the decoder lacks.
    _require(hf, 'attention_bias', lambda v: not v)
    _require(hf, 'mlp_bias', lambda v: not v)
  else:
    _require(hf, 'use_sliding_window', lambda v: not v)
    _require(hf, 'layer_types', lambda v: v is None or set(v) <= {'full_attention'})
  heads = hf.num_attention_heads
  head_dim = getattr(hf, 'head_dim', None) or hf.hidden_size // heads
  cfg = LLMConfig(
      vocab_size=hf.vocab_size, embed_dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
      num_heads=heads, num_kv_heads=getattr(hf, 'num_key_value_heads', None) or heads,
      mlp_dim=hf.intermediate_size,
      head_dim=None if head_dim * heads == hf.hidden_size else head_dim,
      rope_theta=_rope_theta(hf), norm_eps=float(hf.rms_norm_eps),
      qkv_bias=family == 'qwen2',  # Qwen2 always has q/k/v bias and no o bias
      tie_embeddings=bool(getattr(hf, 'tie_word_embeddings', False)),
      activation=_ACTS[hf.hidden_act])
  return dataclasses.replace(cfg, **overrides)


def hf_config_from_llm(cfg: LLMConfig, family: str, max_position_embeddings: int = 4096,
                       **extra):
  """transformers config for `cfg`; `extra` passes through (bos/eos ids, dtype, ...)."""
  import transformers
  if family not in FAMILIES:
    raise UnsupportedConfig(f'family={family!r} is not supported; expected one of {FAMILIES}')
  if family == 'qwen2' and not cfg.qkv_bias:
    raise UnsupportedConfig('LLMConfig field qkv_bias=False: qwen2 always has q/k/v bias')
  if family == 'llama' and cfg.qkv_bias:
    raise UnsupportedConfig('LLMConfig field qkv_bias=True: llama has no q/k/v-only bias '
                            '(export as qwen2)')
  acts = {'silu': 'silu', 'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh',
          'quick_gelu': 'quick_gelu'}
  if cfg.activation not in acts:
    raise UnsupportedConfig(f'LLMConfig field activation={cfg.activation!r} has no HF name')
  kwargs = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, hidden_act=acts[cfg.activation],
      max_position_embeddings=max_position_embeddings, rms_norm_eps=cfg.norm_eps,
      rope_parameters={'rope_type': 'default', 'rope_theta': float(cfg.rope_theta)},
      tie_word_embeddings=cfg.tie_embeddings)
  if family == 'llama':
    cls = transformers.LlamaConfig
    kwargs.update(attention_bias=False, mlp_bias=False)
  else:
    cls = transformers.Qwen2Config  # no head_dim field, but the model reads one if set
  kwargs['head_dim'] = cfg.dim_per_head
  kwargs.update(extra)
  return cls(architectures=[{'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}[
      family]], **kwargs)
