"""`config.model` and `config.runtime` -> the frozen dataclasses model code takes.

Model code never reads the config; this is the one place that does. Architecture
(what is exported) comes from `config.model.<part>`, how it runs from `config.runtime`.
"""
import dataclasses

import jax

from radjax.models import layers, registry, vlm
from radjax.models.runtime import ATTENTION_IMPLS, DTYPES, Runtime

PARTS = tuple(registry.PARTS)
VLM_PARTS = ('vision', 'projector', 'llm')


def runtime(config, part: str, frozen: bool = False) -> Runtime:
  r = config.runtime
  if r.dtype not in DTYPES:
    raise ValueError(f'config.runtime.dtype: {r.dtype!r} not in {sorted(DTYPES)}')
  if r.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f'config.runtime.attention_impl: {r.attention_impl!r} not in '
                     f'{sorted(ATTENTION_IMPLS)}')
  if part not in r.remat:
    raise ValueError(f'config.runtime.remat has no entry for {part!r}')
  if r.remat[part] not in layers.REMAT_POLICIES:
    raise ValueError(f'config.runtime.remat.{part}: {r.remat[part]!r} not in '
                     f'{sorted(layers.REMAT_POLICIES)}')
  return Runtime(dtype=DTYPES[r.dtype], attention_impl=ATTENTION_IMPLS[r.attention_impl],
                 remat_policy=r.remat[part], scan_layers=r.scan_layers,
                 unroll_scan=r.unroll_scan, frozen=frozen)


def vlm_runtime(config, frozen: tuple[str, ...] = ()) -> vlm.VLMRuntime:
  # One process trims each volume batch to its bucket on the host (no recomputation, as
  # deep as its deepest volume); several cannot (radjax/data/pipeline.py): the model does.
  buckets = tuple(config.data.get('depth_buckets', ())) if jax.process_count() > 1 else ()
  return vlm.VLMRuntime(**{p: runtime(config, p, p in frozen) for p in VLM_PARTS},
                        volume_slot_switch=config.runtime.get('volume_slot_switch', True),
                        depth_buckets=buckets)


def check_backend(config) -> None:
  """Run-start check (not at config read, so a GPU workdir still exports on a CPU)."""
  if config.runtime.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError("config.runtime.attention_impl='cudnn' needs an NVIDIA GPU; use 'xla' "
                     f'on {jax.default_backend()}')
  if config.runtime.attention_impl == 'cudnn' and config.runtime.dtype == 'float32':
    # cuDNN's flash attention takes fp16/bf16 only (else JAX's NotImplementedError, a
    # traceback at the first step).
    raise ValueError("config.runtime.attention_impl='cudnn' needs config.runtime.dtype "
                     "'bfloat16' or 'float16', not 'float32'; use attention_impl 'xla' or "
                     "'auto' for float32")
  if config.runtime.attention_impl == 'cudnn':
    # cuDNN's fused attention takes head dims that are multiples of 8 up to 256 (else JAX's
    # NotImplementedError at the first step; a CPU dry run, compiled as 'xla', cannot tell).
    bad = {part: d for part, d in head_dims(config.model).items() if d % 8 or d > 256}
    if bad:
      raise ValueError(f"config.runtime.attention_impl='cudnn' needs head dims that are "
                       f'multiples of 8 up to 256; config.model has {bad}: use '
                       "attention_impl 'auto' or 'xla'")


def head_dims(model_cfg) -> dict[str, int]:
  """{part: its attention's head dim} of the parts config.model composes."""
  out = {}
  for part, cfg in parts_of(model_cfg).items():
    if hasattr(cfg, 'dim_per_head'):
      out[part] = cfg.dim_per_head
    elif hasattr(cfg, 'num_heads'):  # ViT (embed_dim), Q-Former (hidden_dim)
      out[part] = getattr(cfg, 'hidden_dim', None) or cfg.embed_dim
      out[part] //= cfg.num_heads
  return out


def part_config(model_cfg, part: str, **derived):
  """The architecture dataclass of `config.model.<part>` (its `kind` picks the class).

  `derived` fills widths the composition knows (a projector's in/out dims); a nonzero
  value in the section that disagrees is an error naming the key.
  """
  section = model_cfg[part]
  cls = registry.kind(part, section.kind).config
  kw = {}
  for f in dataclasses.fields(cls):
    if not f.init or f.name not in section:
      continue
    kw[f.name] = section[f.name]
  if 'head_dim' in kw:
    kw['head_dim'] = kw['head_dim'] or None
  for name, value in derived.items():
    given = kw.get(name)
    if given and given != value:
      raise ValueError(f'config.model.{part}.{name}={given} but the model needs {value}')
    kw[name] = value
  missing = [f.name for f in dataclasses.fields(cls)
             if f.init and f.default is dataclasses.MISSING and f.name not in kw]
  if missing:
    raise ValueError(f'config.model.{part}: kind {section.kind!r} needs {missing}')
  return cls(**kw)


def part_fields(cfg) -> dict:
  """A part's dataclass as `config.model.<part>` values (inverse of part_config)."""
  out = dataclasses.asdict(cfg)
  out['kind'] = cfg.kind
  if 'head_dim' in out:
    out['head_dim'] = out['head_dim'] or 0
  return out


def llm_config(model_cfg):
  return part_config(model_cfg, 'llm')


def vision_config(model_cfg):
  return part_config(model_cfg, 'vision')


def projector_config(model_cfg, in_dim: int | None = None, out_dim: int | None = None):
  derived = {k: v for k, v in (('in_dim', in_dim), ('out_dim', out_dim)) if v is not None}
  if model_cfg.get('anyres_grids', ()):  # a VLM with AnyRes: the newline is the projector's
    if model_cfg.projector.kind not in ('linear', 'mlp'):
      raise ValueError(f'config.model.anyres_grids needs a token-wise projector (linear, '
                       f'mlp); config.model.projector.kind={model_cfg.projector.kind!r}')
    derived['image_newline'] = True
  return part_config(model_cfg, 'projector', **derived)


def vlm_config(model_cfg, image_token_id: int | None = None,
               num_labels: int = 0) -> vlm.VLMConfig:
  """`image_token_id` (the tokenizer's <image>) is used where config.model.image_token_id
  is -1; a set id must agree with it. `num_labels` > 0 adds the auxiliary label head."""
  vision, lm = vision_config(model_cfg), llm_config(model_cfg)
  token = model_cfg.image_token_id
  if token < 0:
    if image_token_id is None:
      raise ValueError("config.model.image_token_id is -1 (the tokenizer's <image>) and no "
                       'tokenizer was found')
    token = image_token_id
  elif image_token_id is not None and image_token_id != token:
    raise ValueError(f'config.model.image_token_id={token} but the tokenizer has <image> = '
                     f'{image_token_id}')
  grids = tuple(tuple(int(x) for x in g) for g in model_cfg.get('anyres_grids', ()))
  if grids and vision.kind != 'vit':
    raise ValueError(f'config.model.anyres_grids tiles 2D images; config.model.vision.kind='
                     f'{vision.kind!r}')
  if grids and vision.num_tokens != vision.num_patches:  # plans index patch tokens only
    raise ValueError(f'config.model.anyres_grids reads each tile as its patch tokens; the '
                     f'{vision.variant!r} tower keeps its class token too (config.model.'
                     'vision.keep_class_token=True): set it False')
  projector = projector_config(model_cfg, vision.embed_dim, lm.embed_dim)
  _check_resampled(vision, projector)
  return vlm.VLMConfig(vision=vision, projector=projector, llm=lm, image_token_id=token,
                       num_labels=num_labels, anyres_grids=grids,
                       anyres_max_tiles=int(model_cfg.get('anyres_max_tiles', 0)))


def _check_resampled(vision, projector) -> None:
  """A 3D tower's token count varies with the volume's depth (and a 2D image's is another):
  a token-wise projector would leave placeholders with no feature of their own."""
  if vision.kind == 'vit3d' and projector.kind in ('linear', 'mlp'):
    raise ValueError(f"config.model.projector.kind={projector.kind!r} hands on each of the "
                     "vit3d tower's tokens, whose count varies with depth; a 3D tower needs "
                     "a resampling projector ('perceiver' or 'qformer')")


def parts_of(model_cfg) -> dict:
  """{part: architecture dataclass} of the parts `config.model.kind` composes."""
  if model_cfg.kind == 'vlm':
    vision, lm = vision_config(model_cfg), llm_config(model_cfg)
    projector = projector_config(model_cfg, vision.embed_dim, lm.embed_dim)
    _check_resampled(vision, projector)
    return {'vision': vision, 'llm': lm, 'projector': projector}
  if model_cfg.kind == 'classifier':  # its label head has no part of its own
    return {'vision': vision_config(model_cfg)}
  if model_cfg.kind not in PARTS:
    raise ValueError(f'config.model.kind={model_cfg.kind!r} is not one of vlm, classifier, '
                     f'{", ".join(PARTS)}')
  return {model_cfg.kind: part_config(model_cfg, model_cfg.kind)}
