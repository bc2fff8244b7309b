"""A radjax workdir: `config.json` plus orbax checkpoints under `checkpoints/`.

Training writes one; `python -m radjax.convert from-hf` writes one too (a step-0
checkpoint holding only params). Everything that reads a trained or imported model
(`to-hf`, `--mode=eval|generate`, `init_from`) goes through here.
"""
import contextlib
import fcntl
import json
import os
import re
import socket

import jax
import ml_collections

from radjax.core import checkpoint as checkpoint_lib
from radjax.core import defaults as base
from radjax.core import files

CONFIG_FILE = 'config.json'
LOCK_FILE = '.training.lock'  # held while a run trains in the workdir
# The train state's leaves (path -> shape) the checkpoints hold, written when a run starts:
# a knob outside the model that changes them (optim.clip_norm, a label head, ...) is then
# an error naming it, not a checkpoint that "does not restore" and is set aside as damaged.
STATE_FILE = 'state_structure.json'
# config.model knobs that may change between runs of one workdir: where a fresh run's
# weights come from, and the decoder's context length, which only `to-hf` reads. (How it
# runs lives in config.runtime; of that only scan_layers changes what a checkpoint holds.)
RUNTIME_MODEL_KEYS = ('init_from', 'init_fresh', 'max_position_embeddings')


class WorkdirError(ValueError):
  """A workdir that cannot be read or does not fit the config; the message names the file."""


class NotAWorkdir(WorkdirError, FileNotFoundError):
  """A directory without config.json."""


class NoCheckpoint(WorkdirError, FileNotFoundError):
  """A workdir without the checkpoint asked for (any, or of one step)."""


def check_local(workdir: str, knob: str = '--workdir') -> None:
  """A workdir is a path of this machine's filesystem (for several hosts, one every host
  mounts, e.g. a gcsfuse or NFS mount). A URL such as gs://bucket/x is refused: config.json,
  metrics.jsonl and the logs are written with open(), and os.path.abspath turns the URL into
  the local folder './gs:/bucket/x', where each host's checkpoints would stay on its own
  disk."""
  if re.match(r'^[A-Za-z][A-Za-z0-9+.-]*://', workdir or ''):
    raise WorkdirError(f'{knob}={workdir}: a URL, not a path; radjax writes workdirs through '
                       'the local filesystem. Mount the bucket (e.g. gcsfuse, on every host) '
                       'and pass the mounted path')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'{knob}={workdir} is a file; a workdir is a directory')


@contextlib.contextmanager
def training_lock(workdir: str):
  """Process 0 holds <workdir>/.training.lock (flock) while a run trains: a second run on
  the workdir is refused, instead of writing over the first's checkpoints and metrics. A
  filesystem without locks (some network mounts) goes unguarded."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  held = False
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      held = True
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors='replace').strip() or 'another process'
      raise WorkdirError(f'{workdir}: another run ({holder}) is training in this workdir; '
                         'wait for it to end, or choose another --workdir') from None
    except OSError:  # no locks on this filesystem (some network mounts): unguarded
      held = False
    if held:
      os.ftruncate(fd, 0)
      os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}'.encode())
    yield
  finally:
    if held:
      os.unlink(path)  # before the lock goes with the descriptor
    os.close(fd)


def save_config(config, workdir: str) -> None:
  """config.json; the same config again leaves the file as it is."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path, text = os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=1)
    if os.path.exists(path):
      with open(path) as f:
        if f.read() == text:
          return
    files.write_text_atomic(path, text)


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
          raise WorkdirError(f'{CONFIG_FILE}: {here}={value!r} does not fit the type of the '
                           f'default {current!r}') from e
      node[key] = value


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The workdir's config: radjax/core/defaults.py's defaults overlaid with its config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise NotAWorkdir(f'{path} does not exist: {workdir!r} is not a radjax workdir '
                      '(train into it or create it with `python -m radjax.convert from-hf`)')
  values = files.read_json(path, WorkdirError)
  if not isinstance(values, dict):
    raise WorkdirError(f'{path}: expected a JSON object')
  if 'model' not in values and ({'model_type', 'architectures', '_class_name'} & set(values)):
    raise NotAWorkdir(f"{path} is a Hugging Face model's config: {workdir!r} is not a radjax "
                      'workdir (import it with `python -m radjax.convert from-hf`)')
  config = base.get_config()
  _overlay(config, values, '')
  return config


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def has_checkpoints(workdir: str) -> bool:
  d = checkpoint_dir(workdir)
  return os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))


def _flat(node, prefix: str = '') -> dict:
  out = {}
  for k, v in node.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


# The parts (model.<part> sections with a `kind`) each model kind composes; any other kind
# is one part of its own name (radjax/models/factory.parts_of).
_USED_PARTS = {'vlm': ('vision', 'projector', 'llm'), 'classifier': ('vision',)}


def _differing(saved: dict, new: dict, where: str, repr_values: bool = True) -> list[str]:
  """'key: <saved> in <where>, <new> now' for every key whose values differ."""
  show = repr if repr_values else str
  return [f'{k}: {show(saved.get(k))} in {where}, {show(new.get(k))} now'
          for k in sorted(set(saved) | set(new)) if saved.get(k) != new.get(k)]


def _architecture(config) -> dict:
  """The knobs a checkpoint's contents depend on: the model (but RUNTIME_MODEL_KEYS), the
  layer layout and the optimizer's parameter groups (they decide which moments exist)."""
  values = json.loads(config.to_json_best_effort())
  model = dict(values.get('model', {}))
  used = _USED_PARTS.get(model.get('kind'), (model.get('kind'),))
  for name, section in list(model.items()):  # a part the model kind does not compose
    if isinstance(section, dict) and 'kind' in section and name not in used:
      del model[name]
  flat = {f'model.{k}': v for k, v in _flat(model).items()
          if k.rsplit('.', 1)[-1] not in RUNTIME_MODEL_KEYS}
  flat['runtime.scan_layers'] = values.get('runtime', {}).get('scan_layers')
  flat['optim.param_groups'] = values.get('optim', {}).get('param_groups')
  return flat


def _params_only_step(workdir: str) -> int | None:
  """The newest checkpoint's step when it holds params alone (workdir.save_params: an
  import), else None."""
  d = checkpoint_dir(workdir)
  steps = [int(n) for n in os.listdir(d) if n.isdigit()]
  if steps and checkpoint_lib.saved_state_keys(d, max(steps)) == {'params'}:
    return max(steps)
  return None


def _resumed_config(workdir: str):
  """The config.json of a workdir that has checkpoints (a run would resume), else None."""
  if not has_checkpoints(workdir) or not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    return None
  return load_config(workdir)


def check_not_foreign(workdir: str) -> None:
  """Raises WorkdirError when `workdir` holds something other than a radjax workdir: a
  Hugging Face model (its config.json, weights) or a built dataset. A run would write its
  config.json over theirs and its checkpoints and logs beside them. Reads only."""
  if not os.path.isdir(workdir):
    return
  names = os.listdir(workdir)
  advice = 'nothing was written; choose another --workdir'
  if 'dataset_info.json' in names or any('.array_record-' in n for n in names):
    raise WorkdirError(f'{workdir} holds a built dataset (dataset_info.json, ArrayRecord '
                       f'shards), not a radjax workdir; {advice} (the dataset is '
                       'config.data.dir)')
  if CONFIG_FILE in names:
    values = files.read_json(os.path.join(workdir, CONFIG_FILE), WorkdirError)
    if not (isinstance(values, dict) and 'model' in values):
      kind = ("a Hugging Face model's" if isinstance(values, dict) and
              {'model_type', 'architectures', '_class_name'} & set(values) else "not radjax's")
      raise WorkdirError(f'{os.path.join(workdir, CONFIG_FILE)} is {kind} config: {workdir} '
                         f'is not a radjax workdir; {advice} (a Hugging Face model enters a '
                         'run through `python -m radjax.convert from-hf` or init_from)')
    return
  weights = sorted(n for n in names if n.endswith(('.safetensors', '.bin', '.pth')))
  if weights:
    raise WorkdirError(f'{workdir} holds model weights ({", ".join(weights[:3])}) and no '
                       f'radjax config.json; {advice}')


def check_resumable(config, workdir: str, train: bool = True) -> None:
  """Before a run writes anything into a workdir (check_not_foreign); where it has
  checkpoints, raises WorkdirError naming every architecture knob (see _architecture) where
  `config` differs from the workdir's config.json, and (`train`) when they are an imported
  model's, which training cannot resume. Reads only."""
  check_not_foreign(workdir)
  saved = _resumed_config(workdir)
  if saved is None:
    return
  saved, new = _architecture(saved), _architecture(config)
  diffs = _differing(saved, new, 'the workdir')
  if diffs:
    raise WorkdirError(f'{os.path.join(workdir, CONFIG_FILE)}: the workdir was trained with a '
                       f'different model; nothing was written. Differing: {"; ".join(diffs)}. '
                       "Use a new --workdir, or the workdir's own config "
                       f'(--config configs/workdir.py:{workdir}).')
  imported = _params_only_step(workdir) if train else None
  if imported is not None:
    # Resumed, it "did not restore" (no optimizer state, no data position): it was moved
    # to checkpoints_damaged and a rerun trained from scratch.
    raise WorkdirError(f'{checkpoint_dir(workdir)}/{imported} holds only model params (an '
                       'import: `python -m radjax.convert from-hf`), no training state to '
                       'resume; nothing was written. Train into a new --workdir that starts '
                       f'from it: config.model.<part>.init_from={workdir} for each part (a '
                       "recipe's init= argument where it has one)")


SCHEDULE_KNOBS = ('train.num_steps', 'optim.lr', 'optim.warmup_steps', 'optim.warmup_init_lr',
                  'optim.min_lr_ratio', 'optim.schedule')


# Other data under the same order: the run resumes at its batch index in it (a dataset
# moved to another disk is the same data).
DATA_KNOBS = ('data.dir', 'data.tasks', 'data.tokenizer')


def knob_changes(config, workdir: str, knobs=SCHEDULE_KNOBS) -> list[str]:
  """`knobs` where `config` differs from the workdir's config.json, when a run would resume
  there; by default the learning-rate schedule's, which a resumed run re-derives from the
  new values (the lr jumps)."""
  saved = _resumed_config(workdir)
  if saved is None:
    return []

  def values(c):
    return {k: c[k.split('.')[0]].get(k.split('.')[1]) for k in knobs}
  return _differing(values(saved), values(config), 'the workdir')


_ITERATOR_KEY = 'data iterator'
_ORDER_KEY = 'data order'


def _iterator_layout(config) -> str:
  """What the input iterator's checkpointed state means: packed batches keep another
  state, and a batch index resumed with another batch size would skip or repeat examples."""
  d = config.data
  out = f"{'packed' if d.get('pack', False) else ''} batches of {config.train.batch_size}"
  if any(spec.get('kind') == 'volume' for spec in d.mixture.values()):
    out += f', volume batches of {d.volume_batch_size}'
  return out.strip()


def _data_order(config) -> str:
  """What decides which record each resumed batch index reads: another seed, shuffle,
  split or mixture share would repeat and skip records in the epoch it resumes in."""
  d = config.data
  out = (f"seed {config.seed}, {'shuffled' if d.shuffle else 'in order'}, split "
         f'{d.train_split!r}')
  for name, spec in sorted(d.mixture.items()):
    out += (f"; {name}: weight {spec.get('weight', 0.0)}, repeat {spec.get('repeat', 1)}, "
            f"max_records {spec.get('max_records', 0)}, splits {list(spec.get('splits', ()))}")
  return out


def _state_structure(abstract_state) -> dict:
  leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in leaves}


def _config_diffs(config, workdir: str, limit: int = 12) -> list[str]:
  saved = _flat(json.loads(load_config(workdir).to_json_best_effort()))
  new = _flat(json.loads(config.to_json_best_effort()))
  diffs = _differing(saved, new, 'the workdir')
  return diffs[:limit] + ([f'... ({len(diffs) - limit} more)'] if len(diffs) > limit else [])


def check_state(config, workdir: str, abstract_state, fresh: bool,
                finished: bool = False) -> None:
  """A fresh run records its train state's structure (STATE_FILE) and its data order; a
  resumed one must build the same, else WorkdirError naming the state paths and the config
  knobs that differ from config.json, before anything is written or moved. A `finished`
  run reads no more data: its order may differ (a pre-stage reused under another seed)."""
  path = os.path.join(workdir, STATE_FILE)
  new = {**_state_structure(abstract_state), _ITERATOR_KEY: _iterator_layout(config),
         _ORDER_KEY: _data_order(config)}
  if fresh:
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      files.write_json_atomic(path, new)
    return
  if not os.path.exists(path):  # a workdir from before the record
    return
  saved = files.read_json(path, WorkdirError)
  for key in (_ITERATOR_KEY, _ORDER_KEY):
    if key not in saved or (finished and key == _ORDER_KEY):  # recorded before it was
      new.pop(key)
      saved.pop(key, None)
  if saved == new:
    return
  paths = _differing(saved, new, 'the checkpoints', repr_values=False)
  knobs = _config_diffs(config, workdir) if os.path.exists(
      os.path.join(workdir, CONFIG_FILE)) else []
  raise WorkdirError(
      f'{workdir}: this config builds another train state than its checkpoints hold; nothing '
      f'was written or moved. State: {"; ".join(paths[:6])}'
      + (f' (+{len(paths) - 6} more)' if len(paths) > 6 else '')
      + f'. Knobs that differ from {CONFIG_FILE}: {"; ".join(knobs) or "none"}. Use the '
      f"workdir's own config (--config configs/workdir.py:{workdir}) or a new --workdir.")


def latest_step(workdir: str) -> int:
  if not has_checkpoints(workdir):  # without opening a manager, which creates the dir
    raise NoCheckpoint(f'no checkpoint in {checkpoint_dir(workdir)}')
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
  step = ckpt.latest_step()
  ckpt.close()
  if step is None:
    raise NoCheckpoint(f'no checkpoint in {checkpoint_dir(workdir)}')
  return step


def latest_step_unopened(workdir: str) -> int:
  """latest_step read from the step folders alone: for a config file, which main.py loads
  before jax.distributed.initialize. A manager starts JAX's backend (orbax asks it for
  its platform), and a backend started first kept a multi-process run from joining."""
  import orbax.checkpoint as ocp
  steps = ocp.utils.checkpoint_steps(checkpoint_dir(workdir)) if has_checkpoints(workdir) else []
  if not steps:
    raise NoCheckpoint(f'no checkpoint in {checkpoint_dir(workdir)}')
  return max(steps)


def check_step(workdir: str, step: int) -> int:
  """`step` if the workdir has a checkpoint of it, else NoCheckpoint listing those it has."""
  steps = []
  if has_checkpoints(workdir):  # else no manager, which would create the dir
    ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
    steps = sorted(ckpt.manager.all_steps())
    ckpt.close()
  if step not in steps:
    raise NoCheckpoint(f'no checkpoint of step {step} in {checkpoint_dir(workdir)} '
                       f'(it has steps {steps})')
  return step


def load_params(workdir: str, step: int | None = None, path: tuple[str, ...] = (),
                target=None):
  """`params/<path>` of the given (default: latest) checkpoint; see restore_params."""
  step = latest_step(workdir) if step is None else check_step(workdir, step)
  try:
    return checkpoint_lib.restore_params(checkpoint_dir(workdir), step, path, target)
  except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
    raise WorkdirError(
        f'{checkpoint_dir(workdir)}/{step} does not restore ({type(e).__name__}: '
        f'{" ".join(str(e).split())[:200]}). `radjax.serve` and `radjax.convert` read '
        'another step with --step; rerunning the training sets a damaged newest checkpoint '
        'aside') from e


def save_params(workdir: str, config, params, step: int = 0) -> None:
  """A workdir holding `config` and one checkpoint with only `{'params': params}`."""
  if has_checkpoints(workdir):  # before config.json is written: nothing of it is replaced
    raise FileExistsError(f'{checkpoint_dir(workdir)} already has checkpoints; '
                          'choose an empty --out')
  save_config(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
  ckpt.save(step, {'params': params}, force=True)
  ckpt.wait()
  ckpt.close()
