"""HF `LlamaConfig` / `Qwen2Config` / `GPTNeoXConfig` <-> radjax `LLMConfig`.

Anything the radjax decoder cannot reproduce exactly is an error naming the HF
field, so an import never silently changes the model's function.
"""
import dataclasses

from radjax.models.llm import LLMConfig

FAMILIES = ('llama', 'qwen2', 'gpt_neox')
# HF hidden_act -> radjax activation (see radjax/models/layers.ACTIVATIONS).
_ACTS = {'silu': 'silu', 'swish': 'silu', 'gelu': 'gelu', 'gelu_pytorch_tanh': 'gelu_tanh',
         'gelu_new': 'gelu_tanh', 'quick_gelu': 'quick_gelu'}


class UnsupportedConfig(ValueError):
  """An HF config setting radjax cannot represent; the message names the field."""


def _rope(hf) -> tuple[float, float]:
  """(rope_theta, partial rotary factor) from v5 `rope_parameters` or the older
  `rope_theta`/`rope_scaling` (`rotary_emb_base`/`rotary_pct` for GPT-NeoX)."""
  params = getattr(hf, 'rope_parameters', None)
  if params is None:
    scaling = getattr(hf, 'rope_scaling', None)
    if scaling and scaling.get('rope_type', scaling.get('type')) not in (None, 'default'):
      raise UnsupportedConfig(f'HF config field rope_scaling={scaling} is not supported')
    theta = getattr(hf, 'rope_theta', None) or getattr(hf, 'rotary_emb_base', 10000.0)
    return float(theta), float(getattr(hf, 'rotary_pct', 1.0))
  if 'full_attention' in params and isinstance(params['full_attention'], dict):
    raise UnsupportedConfig(f'HF config field rope_parameters={params} (per layer type) '
                            'is not supported')
  if params.get('rope_type', 'default') != 'default':
    raise UnsupportedConfig(f'HF config field rope_parameters.rope_type='
                            f'{params["rope_type"]!r} is not supported (only default RoPE)')
  return (float(params.get('rope_theta', 10000.0)),
          float(params.get('partial_rotary_factor', 1.0)))


def _require(hf, field: str, ok) -> None:
  value = getattr(hf, field, None)
  if not ok(value):
    raise UnsupportedConfig(f'HF config field {field}={value!r} is not supported for '
                            f'{hf.model_type}')


def _max_positions(hf) -> int:
  """HF's max_position_embeddings (LLMConfig's default where a config has none)."""
  value = getattr(hf, 'max_position_embeddings', None)
  if value is None:
    return LLMConfig.__dataclass_fields__['max_position_embeddings'].default
  if not isinstance(value, int) or value < 1:
    raise UnsupportedConfig(f'HF config field max_position_embeddings={value!r} is not '
                            'supported (a positive integer)')
  return value


def llm_config_from_hf(hf, **overrides) -> LLMConfig:
  """LLMConfig for an HF llama/qwen2/gpt_neox config; `overrides` replace fields."""
  family = getattr(hf, 'model_type', None)
  if family not in FAMILIES:
    raise UnsupportedConfig(f'HF config field model_type={family!r} is not supported; '
                            f'expected one of {FAMILIES}')
  _require(hf, 'hidden_act', lambda v: v in _ACTS)
  rope_theta, rotary_pct = _rope(hf)
  overrides = {'max_position_embeddings': _max_positions(hf), **overrides}
  if family == 'gpt_neox':
    return dataclasses.replace(_neox_config_from_hf(hf, rope_theta, rotary_pct), **overrides)
  if rotary_pct != 1.0:
    raise UnsupportedConfig(f'HF config field rope_parameters.partial_rotary_factor='
                            f'{rotary_pct} is not supported for {family}')
  if family == 'llama':
    # attention_bias adds an o_proj bias too, which the decoder lacks.
    _require(hf, 'attention_bias', lambda v: not v)
    _require(hf, 'mlp_bias', lambda v: not v)
  else:
    # Qwen2Config turns use_sliding_window into layer_types (layers from
    # max_window_layers on slide); a window that no layer uses is full attention.
    _require(hf, 'layer_types', lambda v: v is None or set(v) <= {'full_attention'})
  heads = hf.num_attention_heads
  head_dim = getattr(hf, 'head_dim', None) or hf.hidden_size // heads
  cfg = LLMConfig(
      vocab_size=hf.vocab_size, embed_dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
      num_heads=heads, num_kv_heads=getattr(hf, 'num_key_value_heads', None) or heads,
      mlp_dim=hf.intermediate_size,
      head_dim=None if head_dim * heads == hf.hidden_size else head_dim,
      rope_theta=rope_theta, norm_eps=float(hf.rms_norm_eps),
      qkv_bias=family == 'qwen2',  # Qwen2 always has q/k/v bias and no o bias
      tie_embeddings=bool(getattr(hf, 'tie_word_embeddings', False)),
      activation=_ACTS[hf.hidden_act])
  return dataclasses.replace(cfg, **overrides)


def _neox_config_from_hf(hf, rope_theta: float, rotary_pct: float) -> LLMConfig:
  # GPTNeoXAttention uses attention_bias for query_key_value and dense; the MLP always
  # has biases, so attention_bias=False has no radjax layout.
  _require(hf, 'attention_bias', lambda v: v is None or v)
  heads = hf.num_attention_heads
  if hf.hidden_size % heads:
    raise UnsupportedConfig(f'HF config field num_attention_heads={heads} does not divide '
                            f'hidden_size={hf.hidden_size}')
  rotary_dim = int(hf.hidden_size // heads * rotary_pct)
  if not 0.0 < rotary_pct <= 1.0 or rotary_dim % 2:
    raise UnsupportedConfig(f'HF config field rope_parameters.partial_rotary_factor='
                            f'{rotary_pct} is not supported (rotary dims {rotary_dim} must '
                            'be even and positive)')
  return LLMConfig(
      vocab_size=hf.vocab_size, embed_dim=hf.hidden_size, num_layers=hf.num_hidden_layers,
      num_heads=heads, num_kv_heads=heads, mlp_dim=hf.intermediate_size,
      rope_theta=rope_theta, norm_eps=float(hf.layer_norm_eps), qkv_bias=True,
      tie_embeddings=bool(getattr(hf, 'tie_word_embeddings', False)),
      activation=_ACTS[hf.hidden_act], norm='layer', mlp='plain', linear_bias=True,
      parallel_residual=bool(hf.use_parallel_residual), rotary_pct=rotary_pct)


def export_family(cfg: LLMConfig) -> str:
  """The HF family `cfg` exports as: 'gpt_neox', 'qwen2' or 'llama'."""
  if cfg.norm == 'layer' or cfg.mlp == 'plain' or cfg.parallel_residual:
    return 'gpt_neox'
  return 'qwen2' if cfg.qkv_bias else 'llama'


def _check_exportable(cfg: LLMConfig, family: str) -> None:
  """Every LLMConfig field that the HF family hard-codes must match it."""
  neox = family == 'gpt_neox'
  want = {'norm': 'layer' if neox else 'rms', 'mlp': 'plain' if neox else 'gated',
          'linear_bias': neox}
  if neox:
    want.update(qkv_bias=True, num_kv_heads=cfg.num_heads)
  else:
    want.update(parallel_residual=False, rotary_pct=1.0)
  for field, value in want.items():
    if getattr(cfg, field) != value:
      raise UnsupportedConfig(f'LLMConfig field {field}={getattr(cfg, field)!r} cannot be '
                              f'exported as {family} (needs {value!r})')
  if neox and cfg.dim_per_head * cfg.num_heads != cfg.embed_dim:
    raise UnsupportedConfig(f'LLMConfig field head_dim={cfg.head_dim} cannot be exported as '
                            'gpt_neox (needs embed_dim // num_heads)')


def hf_config_from_llm(cfg: LLMConfig, family: str, **extra):
  """transformers config for `cfg` (max_position_embeddings its own); `extra` passes
  through (bos/eos ids, dtype, ...)."""
  import transformers
  if family not in FAMILIES:
    raise UnsupportedConfig(f'family={family!r} is not supported; expected one of {FAMILIES}')
  _check_exportable(cfg, family)
  if family == 'qwen2' and not cfg.qkv_bias:
    raise UnsupportedConfig('LLMConfig field qkv_bias=False: qwen2 always has q/k/v bias')
  if family == 'llama' and cfg.qkv_bias:
    raise UnsupportedConfig('LLMConfig field qkv_bias=True: llama has no q/k/v-only bias '
                            '(export as qwen2)')
  acts = {'silu': 'silu', 'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh',
          'quick_gelu': 'quick_gelu'}
  if cfg.activation not in acts:
    raise UnsupportedConfig(f'LLMConfig field activation={cfg.activation!r} has no HF name')
  if family == 'gpt_neox':
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        hidden_act=acts[cfg.activation], max_position_embeddings=cfg.max_position_embeddings,
        layer_norm_eps=cfg.norm_eps, use_parallel_residual=cfg.parallel_residual,
        rope_parameters={'rope_type': 'default', 'rope_theta': float(cfg.rope_theta),
                         'partial_rotary_factor': float(cfg.rotary_pct)},
        attention_bias=True, tie_word_embeddings=cfg.tie_embeddings)
    kwargs.update(extra)
    return transformers.GPTNeoXConfig(architectures=['GPTNeoXForCausalLM'], **kwargs)
  kwargs = dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, hidden_act=acts[cfg.activation],
      max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps,
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
