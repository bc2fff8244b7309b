"""BLIP-2 Q-Former projector <-> HF (`query_tokens`, `Blip2QFormerModel`, `language_projection`).

Import reads a `Blip2Model` / `Blip2ForConditionalGeneration` directory (its vision and
language models are left out) or a directory this module exported. Export writes a
`Blip2QFormerModel` directory (`Blip2QFormerModel.from_pretrained` loads it) whose
safetensors also hold `query_tokens` and `language_projection.{weight,bias}`, and whose
config.json records `num_query_tokens` and `projection_dim`.
"""
import functools

import flax.linen as nn
import jax.numpy as jnp

from radjax.convert import common
from radjax.convert.common import Rule
from radjax.convert.hf_config import UnsupportedConfig
from radjax.models import qformer

BLIP2_TYPES = ('blip-2',)
EXPORT_TYPE = 'blip_2_qformer'
QUERY_TOKENS = common.Transform(lambda w: w[0], lambda q: q[None])


def config_from_hf(hf) -> qformer.QFormerConfig:
  """QFormerConfig of a Blip2Config, or of a config.json this module exported."""
  if hf.model_type in BLIP2_TYPES:
    q, num_queries, out_dim = hf.qformer_config, hf.num_query_tokens, hf.text_config.hidden_size
  elif hf.model_type == EXPORT_TYPE:
    q, num_queries, out_dim = hf, getattr(hf, 'num_query_tokens', None), getattr(
        hf, 'projection_dim', None)
    if not num_queries or not out_dim:
      raise UnsupportedConfig(f'{EXPORT_TYPE} config lacks num_query_tokens/projection_dim '
                              '(a bare Q-Former has no query tokens or projection)')
  else:
    raise UnsupportedConfig(f'HF config field model_type={hf.model_type!r} is not a BLIP-2 '
                            f'model; expected one of {(*BLIP2_TYPES, EXPORT_TYPE)}')
  if q.hidden_act != 'gelu':
    raise UnsupportedConfig(f'HF config field qformer_config.hidden_act={q.hidden_act!r} is '
                            "not supported (radjax's Q-Former uses exact 'gelu')")
  if getattr(q, 'use_qformer_text_input', False):
    raise UnsupportedConfig('HF config field qformer_config.use_qformer_text_input=True is '
                            'not supported (the projector has no text input)')
  return qformer.QFormerConfig(
      in_dim=q.encoder_hidden_size, out_dim=out_dim, num_queries=num_queries,
      hidden_dim=q.hidden_size, num_layers=q.num_hidden_layers,
      num_heads=q.num_attention_heads, mlp_dim=q.intermediate_size,
      cross_attention_every=q.cross_attention_frequency, norm_eps=float(q.layer_norm_eps))


def hf_config(cfg: qformer.QFormerConfig):
  import transformers
  return transformers.Blip2QFormerConfig(
      architectures=['Blip2QFormerModel'], hidden_size=cfg.hidden_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      intermediate_size=cfg.mlp_dim, hidden_act='gelu', layer_norm_eps=cfg.norm_eps,
      cross_attention_frequency=cfg.cross_attention_every, encoder_hidden_size=cfg.in_dim,
      num_query_tokens=cfg.num_queries, projection_dim=cfg.out_dim)


def _attention_rules(cfg, i: int, ours: str, hf: str) -> list[Rule]:
  o, h = f'qformer/layers_{i}/{ours}', f'encoder.layer.{i}.{hf}'
  rules = []
  for a, b in (('q', 'query'), ('k', 'key'), ('v', 'value')):
    rules += [Rule(f'{o}/{a}/kernel', f'{h}.attention.{b}.weight', 'qkv'),
              Rule(f'{o}/{a}/bias', f'{h}.attention.{b}.bias', 'qkv_bias')]
  return rules + [Rule(f'{o}/o/kernel', f'{h}.output.dense.weight', 'o'),
                  Rule(f'{o}/o/bias', f'{h}.output.dense.bias', 'identity'),
                  Rule(f'{o}/norm/scale', f'{h}.output.LayerNorm.weight', 'identity'),
                  Rule(f'{o}/norm/bias', f'{h}.output.LayerNorm.bias', 'identity')]


def rules(cfg: qformer.QFormerConfig, prefix: str) -> list[Rule]:
  """Our path <-> HF name; `prefix` is 'qformer.' inside a Blip2Model, '' in our export."""
  out = [Rule('query_tokens', 'query_tokens', 'query_tokens'),
         Rule('out/kernel', 'language_projection.weight', 'linear'),
         Rule('out/bias', 'language_projection.bias', 'identity')]
  q = [Rule('qformer/norm/scale', 'layernorm.weight', 'identity'),
       Rule('qformer/norm/bias', 'layernorm.bias', 'identity')]
  for i in range(cfg.num_layers):
    q += _attention_rules(cfg, i, 'self_attn', 'attention')
    if cfg.has_cross_attention(i):
      q += _attention_rules(cfg, i, 'cross_attn', 'crossattention')
    o, h = f'qformer/layers_{i}', f'encoder.layer.{i}'
    q += [Rule(f'{o}/fc1/kernel', f'{h}.intermediate_query.dense.weight', 'linear'),
          Rule(f'{o}/fc1/bias', f'{h}.intermediate_query.dense.bias', 'identity'),
          Rule(f'{o}/fc2/kernel', f'{h}.output_query.dense.weight', 'linear'),
          Rule(f'{o}/fc2/bias', f'{h}.output_query.dense.bias', 'identity'),
          Rule(f'{o}/mlp_norm/scale', f'{h}.output_query.LayerNorm.weight', 'identity'),
          Rule(f'{o}/mlp_norm/bias', f'{h}.output_query.LayerNorm.bias', 'identity')]
  return out + [Rule(r.ours, prefix + r.hf, r.transform) for r in q]


def _transforms(cfg: qformer.QFormerConfig) -> dict:
  h, d = cfg.num_heads, cfg.hidden_dim // cfg.num_heads
  return {'identity': common.IDENTITY, 'linear': common.LINEAR, 'query_tokens': QUERY_TOKENS,
          'qkv': common.linear_out_heads(h, d), 'qkv_bias': common.bias_heads(h, d),
          'o': common.linear_in_heads(h, d)}


@functools.lru_cache(maxsize=16)
def param_shapes(cfg: qformer.QFormerConfig) -> dict:
  return common.shapes_of(qformer.QFormerProjector(cfg), jnp.zeros((1, 1, cfg.in_dim)))


def params_from_hf(state_dict: dict, cfg: qformer.QFormerConfig, scan: bool = True,
                   skip: str = r'$^') -> dict:
  """HF tensors (a Blip2Model's, whose vision and language models are ignored, or our
  export's) -> the projector's f32 params, bar those `skip` names (common.to_ours). The
  Q-Former is never scanned."""
  del scan
  prefix = 'qformer.' if any(k.startswith('qformer.') for k in state_dict) else ''
  flat = common.to_ours(state_dict, rules(cfg, prefix), _transforms(cfg), param_shapes(cfg),
                        cfg.num_layers, scan=False, ignore=r'^(vision_model|language_model)\.',
                        skip=skip)
  return common.unflatten(flat)


def hf_from_params(params: dict, cfg: qformer.QFormerConfig) -> dict:
  """Projector params -> our export's tensors (Blip2QFormerModel names + query tokens +
  language projection)."""
  if set(params) == {'params'}:
    params = params['params']
  flat = common.flatten(nn.meta.unbox(params))
  return common.to_hf(flat, rules(cfg, ''), _transforms(cfg), param_shapes(cfg),
                      cfg.num_layers)
