"""`config.model.<part>.init_from`: start a part from an HF directory or a workdir.

The vision tower and the LLM come from their own HF models, a Llava, or any workdir
holding them; the projector from a Llava or a VLM workdir (LLaVA's stage 2 starts all
three from stage 1's workdir).

Each tower becomes a loader for `create_train_state`, which hands it the tower's
sharded abstract target. A workdir whose tower has exactly the target's layout is
restored straight into the shards; anything else (an HF directory, another layer
layout, a smaller vocabulary) goes through the tower's HF state dict on the host.
"""
import dataclasses
import os

from absl import logging

from radjax.convert import hf_io, towers
from radjax.core import workdir as workdir_lib
from radjax.models import factory

TOWERS = ('llm', 'vision')
_TO_HF = {'llm': towers.llm_to_hf, 'vision': towers.vision_to_hf}
_FROM_HF = {'llm': towers.llm_from_hf, 'vision': towers.vision_from_hf}
_CONFIG = {'llm': factory.llm_config, 'vision': factory.vit_config}


def _structure(cfg):
  return dataclasses.replace(cfg, **{k: None for k in factory.RUNTIME_FIELDS})


def _from_workdir(tower: str, path: str, target_cfg, target):
  source = workdir_lib.load_config(path)
  kind = source.model.kind
  if kind not in (tower, 'vlm'):
    raise ValueError(f'config.model.{tower}.init_from={path!r} is a {kind!r} workdir, '
                     f'which has no {tower} tower')
  sub = (tower,) if kind == 'vlm' else ()
  source_cfg = _CONFIG[tower](source.model)
  if _structure(source_cfg) == _structure(target_cfg) and (
      source_cfg.scan_layers == target_cfg.scan_layers):
    return workdir_lib.load_params(path, path=sub, target=target)
  hf_cfg, state_dict = _TO_HF[tower](source_cfg, workdir_lib.load_params(path, path=sub))
  return _FROM_HF[tower](hf_cfg, state_dict, target_cfg)


def _from_hf_dir(tower: str, path: str, target_cfg):
  hf_cfg, state_dict = hf_io.load_hf_dir(path)
  if hf_cfg.model_type == 'llava':
    from radjax.convert import llava
    hf_cfg, state_dict = llava.tower_state_dict(hf_cfg, state_dict, tower)
  return _FROM_HF[tower](hf_cfg, state_dict, target_cfg)


def _projector(path: str, config):
  """Projector params (host arrays) from a VLM workdir or an HF Llava directory."""
  if os.path.exists(os.path.join(path, workdir_lib.CONFIG_FILE)):
    kind = workdir_lib.load_config(path).model.kind
    if kind != 'vlm':
      raise ValueError(f'config.model.projector.init_from={path!r} is a {kind!r} workdir, '
                       'which has no projector')
    return workdir_lib.load_params(path, path=('projector',))
  hf_cfg, state_dict = hf_io.load_hf_dir(path)
  if hf_cfg.model_type != 'llava':
    raise ValueError(f'config.model.projector.init_from={path!r}: model_type='
                     f'{hf_cfg.model_type!r} has no projector (expected llava)')
  from radjax.convert import llava
  return llava.projector_params_from_hf(state_dict, factory.vlm_config(config.model))


def loaders(config) -> dict:
  """{part: load(target) -> params} for every model part with an `init_from`."""
  out = {}
  path = config.model.projector.get('init_from', '')
  if path:
    if not os.path.isdir(path):
      raise FileNotFoundError(f'config.model.projector.init_from={path!r} is not a directory')
    out['projector'] = lambda target, path=path: _projector(path, config)
  for tower in TOWERS:
    path = config.model[tower].get('init_from', '')
    if not path:
      continue
    if not os.path.isdir(path):
      raise FileNotFoundError(f'config.model.{tower}.init_from={path!r} is not a directory')
    target_cfg = _CONFIG[tower](config.model)

    def load(target, tower=tower, path=path, target_cfg=target_cfg):
      logging.info('initialising %s from %s', tower, path)
      if os.path.exists(os.path.join(path, workdir_lib.CONFIG_FILE)) and os.path.isdir(
          workdir_lib.checkpoint_dir(path)):
        return _from_workdir(tower, path, target_cfg, target)
      return _from_hf_dir(tower, path, target_cfg)
    out[tower] = load
  return out
