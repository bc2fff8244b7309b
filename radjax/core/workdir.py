"""A radjax workdir: `config.json` plus orbax checkpoints under `checkpoints/`.

Training writes one; `python -m radjax.convert from-hf` writes one too (a step-0
checkpoint holding only params). Everything that reads a trained or imported model
(`to-hf`, `--mode=eval|generate`, `init_from`) goes through here.
"""
import json
import os

import jax
import ml_collections

from radjax.core import checkpoint as checkpoint_lib
from radjax.core import defaults as base

CONFIG_FILE = 'config.json'


def save_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=1))


def _overlay(node: ml_collections.ConfigDict, values: dict, where: str) -> None:
  """Writes JSON values over the base config; lists become tuples where base has tuples."""
  for key, value in values.items():
    here = f'{where}.{key}' if where else key
    current = node.get(key) if key in node else None
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _overlay(current, value, here)
      continue
    if isinstance(value, list):
      value = _tuples(value)
    if isinstance(value, dict):
      value = ml_collections.ConfigDict(value)
    with node.unlocked():
      if key in node and current is not None and type(current) is not type(value):
        try:
          value = type(current)(value)
        except (TypeError, ValueError) as e:
          raise ValueError(f'{CONFIG_FILE}: {here}={value!r} does not fit the type of the '
                           f'default {current!r}') from e
      node[key] = value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config: radjax/core/defaults.py's defaults overlaid with its config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: {workdir!r} is not a radjax workdir '
                            '(train into it or create it with `python -m radjax.convert from-hf`)')
  with open(path) as f:
    values = json.load(f)
  config = base.get_config()
  _overlay(config, values, '')
  return config


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def latest_step(workdir: str) -> int:
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
  step = ckpt.latest_step()
  ckpt.close()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir(workdir)}')
  return step


def load_params(workdir: str, step: int | None = None, path: tuple[str, ...] = (),
                target=None):
  """`params/<path>` of the given (default: latest) checkpoint; see restore_params."""
  step = latest_step(workdir) if step is None else step
  return checkpoint_lib.restore_params(checkpoint_dir(workdir), step, path, target)


def save_params(workdir: str, config, params, step: int = 0) -> None:
  """A workdir holding `config` and one checkpoint with only `{'params': params}`."""
  save_config(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
  if ckpt.latest_step() is not None:
    ckpt.close()
    raise FileExistsError(f'{checkpoint_dir(workdir)} already has checkpoints; '
                          'choose an empty --out')
  ckpt.save(step, {'params': params}, force=True)
  ckpt.wait()
  ckpt.close()
