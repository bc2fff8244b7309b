"""LLaMA / Qwen2 decoder <-> HF `LlamaForCausalLM` / `Qwen2ForCausalLM` weights.

One table drives both directions; Qwen2 differs only by the q/k/v bias rows.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from radjax.convert import common
from radjax.convert.common import Rule
from radjax.models import llm
from radjax.models.runtime import Runtime

_L = 'model.layers.{i}.'
RULES = (
    Rule('embedder/embedding', 'model.embed_tokens.weight', 'identity'),
    Rule('layers_{i}/attn_norm/scale', _L + 'input_layernorm.weight', 'identity'),
    Rule('layers_{i}/attn/q/kernel', _L + 'self_attn.q_proj.weight', 'q'),
    Rule('layers_{i}/attn/k/kernel', _L + 'self_attn.k_proj.weight', 'kv'),
    Rule('layers_{i}/attn/v/kernel', _L + 'self_attn.v_proj.weight', 'kv'),
    Rule('layers_{i}/attn/q/bias', _L + 'self_attn.q_proj.bias', 'q_bias', 'qkv_bias'),
    Rule('layers_{i}/attn/k/bias', _L + 'self_attn.k_proj.bias', 'kv_bias', 'qkv_bias'),
    Rule('layers_{i}/attn/v/bias', _L + 'self_attn.v_proj.bias', 'kv_bias', 'qkv_bias'),
    Rule('layers_{i}/attn/o/kernel', _L + 'self_attn.o_proj.weight', 'o'),
    Rule('layers_{i}/mlp_norm/scale', _L + 'post_attention_layernorm.weight', 'identity'),
    Rule('layers_{i}/mlp/gate/kernel', _L + 'mlp.gate_proj.weight', 'linear'),
    Rule('layers_{i}/mlp/up/kernel', _L + 'mlp.up_proj.weight', 'linear'),
    Rule('layers_{i}/mlp/down/kernel', _L + 'mlp.down_proj.weight', 'linear'),
    Rule('final_norm/scale', 'model.norm.weight', 'identity'),
    Rule('lm_head/kernel', 'lm_head.weight', 'linear', 'untied'),
)
# Non-persistent RoPE buffers that some older checkpoints still carry.
IGNORED_HF = r'rotary_emb\.inv_freq$'


def _rules(cfg: llm.LLMConfig):
  flags = {'qkv_bias': cfg.qkv_bias, 'untied': not cfg.tie_embeddings}
  return [r for r in RULES if r.when is None or flags[r.when]]


def _transforms(cfg: llm.LLMConfig) -> dict:
  h, k, d = cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head
  return {
      'identity': common.IDENTITY, 'linear': common.LINEAR,
      'q': common.linear_out_heads(h, d), 'kv': common.linear_out_heads(k, d),
      'o': common.linear_in_heads(h, d),
      'q_bias': common.bias_heads(h, d), 'kv_bias': common.bias_heads(k, d),
  }


@functools.lru_cache(maxsize=16)
def param_shapes(cfg: llm.LLMConfig, scan: bool) -> dict:
  """Flat {path: shape} of `Decoder(cfg)` params in the given layout (nothing allocated)."""
  return common.shapes_of(llm.Decoder(cfg, Runtime(scan_layers=scan)),
                          jnp.zeros((1, 1, cfg.embed_dim)), jnp.zeros((1, 1), jnp.int32))


def params_from_hf(state_dict: dict, cfg: llm.LLMConfig, scan: bool) -> dict:
  """HF state dict (name -> numpy) -> radjax f32 params tree (the value under 'params')."""
  sd = dict(state_dict)
  if cfg.tie_embeddings and 'lm_head.weight' in sd:
    # Some tied checkpoints store the head anyway; accept it only if it is the tie.
    head = sd.pop('lm_head.weight')
    emb = sd.get('model.embed_tokens.weight')
    if emb is None or head.shape != emb.shape or (head != emb).any():
      raise common.ConversionError("HF tensor 'lm_head.weight' differs from "
                                   "'model.embed_tokens.weight' but the config ties them")
  flat = common.to_ours(sd, _rules(cfg), _transforms(cfg), param_shapes(cfg, scan),
                        cfg.num_layers, scan, ignore=IGNORED_HF)
  return common.unflatten(flat)


def hf_from_params(params: dict, cfg: llm.LLMConfig) -> dict:
  """radjax params tree (scanned or not; 'params' wrapper optional) -> HF state dict."""
  if set(params) == {'params'}:
    params = params['params']
  flat = common.flatten(nn.meta.unbox(params))
  scan = any(p.startswith(common.SCANNED_PREFIX) for p in flat)
  return common.to_hf(flat, _rules(cfg), _transforms(cfg), param_shapes(cfg, scan),
                      cfg.num_layers)
