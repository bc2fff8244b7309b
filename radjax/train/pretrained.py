"""`config.model.<part>.init_from`: start a part from an HF directory or a workdir.

The vision tower and the LLM come from their own HF models, a Llava (or LLaVA-OneVision),
or any workdir holding them; the projector from a Llava (or
LLaVA-OneVision), a BLIP-2 directory (Q-Former) or a workdir holding one (LLaVA's stage 2
starts all three from stage 1's workdir). The vision tower and the projector may also
come from one weights file (`.pth` / `.bin` / `.safetensors`) in HF BLIP-2 or LAVIS names:
a BLIP-2 `.pth` gives the EVA tower and the Q-Former, a MiniGPT-4 / XrayGPT checkpoint's
`llama_proj` a 'linear' projector. A file carries no config, so the target's architecture
is taken as given and every tensor's shape checked.

Each part becomes a loader for `create_train_state`, which hands it the part's
sharded abstract target. A workdir whose part has exactly the target's architecture
and layer layout is restored straight into the shards; anything else (an HF
directory, another layer layout, a smaller vocabulary) goes through the host: through
the part's HF state dict, or, for a part with no HF conversion (vit3d, the perceiver),
as the workdir's own arrays restacked.

Params the part's `init_fresh` names keep their initialisation (create_train_state's
`fresh`), so the loaders leave them out: the source need not hold them, at any shape
(XrayGPT's llama_proj from a BLIP-2 OPT, whose projection is 2560 wide, not Vicuna's 4096).
"""
import os
import re

import jax
import numpy as np
from absl import logging

from radjax.convert import common, hf_io, lavis, parts
from radjax.convert.common import ConversionError
from radjax.core import workdir as workdir_lib
from radjax.models import factory
from radjax.train import optimizer as optimizer_lib


def _from_workdir(part: str, path: str, target_cfg, target, scan: bool, fresh: str = ''):
  source = workdir_lib.load_config(path)
  kind = source.model.kind
  source_parts = factory.parts_of(source.model)
  if part not in source_parts:
    raise ValueError(f'config.model.{part}.init_from={path!r} is a {kind!r} workdir, '
                     f'which has no {part}')
  sub = () if kind == part else (part,)  # a part inside a composition (vlm, classifier)
  source_cfg = source_parts[part]
  if source_cfg.kind != target_cfg.kind:
    raise ValueError(f'config.model.{part}.init_from={path!r} holds a {part} of kind '
                     f'{source_cfg.kind!r}, but config.model.{part}.kind={target_cfg.kind!r}')
  has_codec = (part, target_cfg.kind) in parts.CODECS
  same = (parts.CODECS[(part, target_cfg.kind)].same_weights(source_cfg, target_cfg)
          if has_codec else source_cfg == target_cfg)
  if same and source.runtime.scan_layers == scan:
    return _restored(workdir_lib.load_params(path, path=sub, target=target), part, path)
  if not has_codec:  # no HF layout to convert through: the workdir's arrays as they are
    # Another layer layout, or fields that shape only `fresh` params (which leave before
    # create_train_state checks every other shape).
    parts.check_same(part, source_cfg, target_cfg, scan, fresh)
    return _relayout(workdir_lib.load_params(path, path=sub), scan)
  hf_cfg, state_dict = parts.to_hf(part, source_cfg, workdir_lib.load_params(path, path=sub))
  return parts.params_for(part, hf_cfg, state_dict, target_cfg, scan, fresh)


def _restored(params, part: str, path: str):
  """`params` restored into a target: orbax's partial restore hands back, unread, the
  target's leaves the checkpoint lacks (a workdir of an older radjax), an error here."""
  unread = [optimizer_lib.path_str(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
            if isinstance(x, jax.ShapeDtypeStruct)]
  if unread:
    raise ValueError(f'config.model.{part}.init_from={path!r}: its checkpoint has no '
                     f'{unread[:5]}{" ..." if len(unread) > 5 else ""} for this {part}')
  return params


def _relayout(params: dict, scan: bool) -> dict:
  """A part's host params in the layer layout `scan` asks for: 'layers' (leaves [layers,
  ...], nn.scan's) <-> 'layers_0', 'layers_1' ... (vit3d, the perceiver; a part without
  a layer stack is returned as it is)."""
  unscanned = sorted((k for k in params if re.fullmatch(r'layers_\d+', k)),
                     key=lambda k: int(k.split('_')[1]))
  if scan and unscanned:
    out = {k: v for k, v in params.items() if k not in unscanned}
    out['layers'] = jax.tree.map(lambda *xs: np.stack(xs), *(params[k] for k in unscanned))
    return out
  if not scan and 'layers' in params:
    out = {k: v for k, v in params.items() if k != 'layers'}
    for i in range(len(jax.tree.leaves(params['layers'])[0])):
      out[f'layers_{i}'] = jax.tree.map(lambda x, i=i: x[i], params['layers'])
    return out
  return params


def _from_hf_dir(part: str, path: str, target_cfg, scan: bool, fresh: str = ''):
  hf_cfg, state_dict = hf_io.load_hf_dir(path)
  if hf_cfg.model_type in ('llava', 'llava_onevision'):
    from radjax.convert import llava
    if part == 'projector':
      drop = hf_cfg.model_type == llava.ONEVISION and not target_cfg.image_newline
      if drop:
        logging.warning('config.model.projector.init_from=%s: %s', path,
                        llava.onevision_note(hf_cfg))
      return llava.projector_params_from_hf(state_dict, target_cfg,
                                            hf_cfg.text_config.model_type, drop,
                                            skip=fresh or r'$^')
    hf_cfg, state_dict = llava.tower_state_dict(hf_cfg, state_dict, part)
  return parts.params_for(part, hf_cfg, state_dict, target_cfg, scan, fresh)


def _from_files(part: str, paths: list[str], target_cfg, scan: bool, fresh: str = ''):
  """Weights files merged in order (a later file's tensors replace an earlier's): e.g.
  XrayGPT's Q-Former from a BLIP-2 .pth and its `llama_proj` from XrayGPT's .pth."""
  state_dict = {}
  for path in paths:
    state_dict.update(lavis.hf_names(hf_io.load_state_dict_file(path), path))
  try:
    return parts.params_from_tensors(part, state_dict, target_cfg, scan,
                                     source=','.join(paths), fresh=fresh)
  except ConversionError as e:
    hint = ''
    if target_cfg.kind == 'qformer' and not any(k.startswith('qformer.') for k in state_dict):
      hint = (" (XrayGPT's .pth holds only its projection: BLIP-2's .pth, with the Q-Former, "
              'goes first, e.g. init_from=blip2.pth,xraygpt_stage1.pth)')
    raise ConversionError(f'config.model.{part}.init_from={",".join(paths)!r}: {e}{hint}'
                          ) from e


def check_path(part: str, path: str) -> None:
  """config.model.<part>.init_from names weights files, a workdir or an HF directory."""
  files = path.split(',')
  for f in files:
    if not os.path.exists(f) or (len(files) > 1 and not os.path.isfile(f)):
      raise FileNotFoundError(f'config.model.{part}.init_from={path!r}: {f!r} is not '
                              + ('a weights file' if len(files) > 1 else
                                 'a directory or a weights file'))
    if os.path.isdir(f) and not os.path.exists(os.path.join(f, workdir_lib.CONFIG_FILE)):
      raise FileNotFoundError(f'config.model.{part}.init_from={path!r}: a directory without '
                              'config.json, neither a radjax workdir nor an HF model')


def check_not_this_workdir(config, workdir: str) -> None:
  """A part started from the run's own workdir (XrayGPT's stage 2 given stage 1's dir as
  --workdir) would resume that run and train over it: an error, before anything is written."""
  here = os.path.realpath(workdir)
  for part in factory.parts_of(config.model):
    path = config.model[part].get('init_from', '')
    if path and here in (os.path.realpath(f) for f in path.split(',')):
      raise ValueError(f'config.model.{part}.init_from={path!r} is the --workdir of this run: '
                       'training would resume that run and overwrite it. Give this run its own '
                       '--workdir')


def check_paths(config) -> None:
  """Every part's init_from exists (a pre-stage's part gets its init_from when it trains)."""
  staged = config.train.pre_stage_part if config.train.get('pre_stage', '') else None
  for part in factory.parts_of(config.model):
    path = config.model[part].get('init_from', '')
    if path and part != staged:
      check_path(part, path)


def _init_fresh(config, part: str) -> str:
  """config.model.<part>.init_fresh where an init_from comes with it, else ''."""
  regex = config.model[part].get('init_fresh', '')
  if not (regex and config.model[part].get('init_from', '')):
    return ''
  try:
    re.compile(regex)
  except re.error as e:
    raise ValueError(f'config.model.{part}.init_fresh={regex!r}: not a regex ({e})') from None
  return regex


def _without(params, regex: str):
  """`params` less the leaves whose 'a/b' path fullmatches `regex` ('' keeps all)."""
  if not regex:
    return params
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return common.unflatten({optimizer_lib.path_str(p): x for p, x in leaves
                           if not re.fullmatch(regex, optimizer_lib.path_str(p))})


def fresh_paths(config, part_keys: dict) -> dict:
  """{param key: regex} of the parts whose init_from comes with an init_fresh: those
  params keep their initialisation (create_train_state's `fresh`)."""
  out = {}
  for part, key in part_keys.items():
    regex = _init_fresh(config, part)
    if regex:
      out[key] = regex
  return out


def loaders(config, part_keys: dict) -> dict:
  """{param key: load(target) -> params} for every part with an `init_from`.

  `part_keys` maps a part to its key in the model's param tree (a VLM: its own name;
  a bare decoder: state.WHOLE)."""
  out = {}
  cfgs = factory.parts_of(config.model)
  scan = config.runtime.scan_layers
  for part, key in part_keys.items():
    path = config.model[part].get('init_from', '')
    if not path:
      continue
    check_path(part, path)

    def load(target, part=part, path=path, target_cfg=cfgs[part],
             fresh=_init_fresh(config, part)):
      logging.info('initialising %s from %s', part, path)
      if os.path.isfile(path.split(',')[0]):
        params = _from_files(part, path.split(','), target_cfg, scan, fresh)
      elif os.path.exists(os.path.join(path, workdir_lib.CONFIG_FILE)) and os.path.isdir(
          workdir_lib.checkpoint_dir(path)):
        params = _from_workdir(part, path, target_cfg, target, scan, fresh)
      else:
        params = _from_hf_dir(part, path, target_cfg, scan, fresh)
      return _without(params, fresh)
    out[key] = load
  return out
