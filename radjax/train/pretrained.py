"""`config.model.<tower>.init_from`: start a tower from an HF directory or a workdir.

Each tower becomes a loader for `create_train_state`, which hands it the tower's
sharded abstract target. A workdir whose tower has exactly the target's layout is
restored straight into the shards; anything else (an HF directory, another layer
layout, a smaller vocabulary) goes through the tower's HF state dict on the host.
"""
import dataclasses
import os

from absl import logging

from radjax import workdir as workdir_lib
from radjax.convert import hf_io, towers
from radjax.models import factory

TOWERS = ('llm', 'vision')
_TO_HF = {'llm': towers.llm_to_hf, 'vision': towers.vision_to_hf}
_FROM_HF = {'llm': towers.llm_from_hf, 'vision': towers.vision_from_hf}
_CONFIG = {'llm': factory.llm_config, 'vision': factory.vit_config}
_RUNTIME = ('dtype', 'attention_impl', 'remat_policy', 'scan_layers')


def _structure(cfg):
  return dataclasses.replace(cfg, **{k: None for k in _RUNTIME})


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


def loaders(config) -> dict:
  """{tower: load(target) -> params} for every tower with an `init_from`."""
  out = {}
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
