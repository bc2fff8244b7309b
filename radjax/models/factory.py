"""Turns the `config.model` section into frozen model dataclasses (derived once)."""
import dataclasses

import jax
import jax.numpy as jnp

from radjax.models import llm, projector, vit, vlm

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ATTENTION_IMPLS = {'xla': 'xla', 'cudnn': 'cudnn', 'auto': None}


def _common(model_cfg) -> dict:
  if model_cfg.dtype not in DTYPES:
    raise ValueError(f'config.model.dtype: {model_cfg.dtype!r} not in {sorted(DTYPES)}')
  if model_cfg.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f'config.model.attention_impl: {model_cfg.attention_impl!r} not in '
                     f'{sorted(ATTENTION_IMPLS)}')
  if model_cfg.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError("config.model.attention_impl='cudnn' needs an NVIDIA GPU; use 'xla' on "
                     f'{jax.default_backend()}')
  return dict(dtype=DTYPES[model_cfg.dtype],
              attention_impl=ATTENTION_IMPLS[model_cfg.attention_impl],
              remat_policy=model_cfg.remat_policy, scan_layers=model_cfg.scan_layers)


def llm_config(model_cfg) -> llm.LLMConfig:
  kw = dict(model_cfg.llm.to_dict())
  kw.pop('init_from', None)
  kw['head_dim'] = kw.get('head_dim') or None
  return llm.LLMConfig(**kw, **_common(model_cfg))


def vit_config(model_cfg) -> vit.ViTConfig:
  kw = dict(model_cfg.vision.to_dict())
  kw.pop('init_from', None)
  return vit.ViTConfig(**kw, **_common(model_cfg))


def vlm_config(model_cfg, freeze_vision: bool = False) -> vlm.VLMConfig:
  lm = llm_config(model_cfg)
  proj = projector.ProjectorConfig(kind=model_cfg.projector.kind, out_dim=lm.embed_dim,
                                   dtype=lm.dtype)
  return vlm.VLMConfig(vision=vit_config(model_cfg), projector=proj, llm=lm,
                       image_token_id=model_cfg.image_token_id, freeze_vision=freeze_vision)


# Fields of the model dataclasses that come from config.model itself, not its towers.
RUNTIME_FIELDS = ('dtype', 'attention_impl', 'remat_policy', 'scan_layers')


def tower_fields(cfg) -> dict:
  """An LLMConfig / ViTConfig as `config.model.llm|vision` values (inverse of above)."""
  out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS}
  if 'head_dim' in out:
    out['head_dim'] = out['head_dim'] or 0
  return out
