"""config.data.mixture: several datasets trained together, each with its own instruction
tasks, mixed by weight (radjax/data/pipeline.py builds the stream).

    config.data.mixture.<name> = dict(dir=..., tasks=(...), weight=0.0, repeat=1,
                                      max_records=0, splits=(), kind='image',
                                      builder='', builder_kwargs={})

- dir: a built dataset (its train split is read); required.
- splits: the splits of `dir` it trains on, read one after another as one set (RadVLM
  trains MS-CXR and PadChest-GR on train + val); () (the default): the run's train split.
- tasks: the instruction tasks its records become; default config.data.tasks.
- kind: 'image' (2D) or 'volume' (3D scans, for a 'vit3d' tower): each kind is mixed
  apart and batched apart (RadFM's 2D/3D batches), so a batch never holds both; the
  weights below share out the components of one kind.
- builder, builder_kwargs: main.py builds `dir` with data_prep.<builder> when missing
  (like config.data.builder).
- max_records: N > 0 reads at most N of its records: a subset fixed by config.seed
  and the name (the same on every process, epoch and resume), RadVLM's `num_samples` cap
  (80,000 of Chest ImaGenome's images). 0 (the default): every record.
- weight, repeat: component i is drawn with probability proportional to
      w_i * repeat_i,  w_i = weight_i if weights are given, else the size of its training
                             records (its splits, after max_records).
  Either every weight is 0 (RadVLM's way: the datasets concatenated, a small one listed
  `repeat` times) or every weight is positive (a share, normalised over the components;
  repeat then multiplies it). Mixing the two would compare record counts with shares, so
  it is an error.

Components are taken in name order (ConfigDict sorts its keys): that order gives each
one its `source` index in a batch and makes the first one the eval dataset when
config.data.dir is '' (config.eval.datasets gives an evaluator another, e.g. a component
by name: radjax/eval/evaluators/eval_sets.py). Each is shuffled with its own seed, a
function of config.seed and its name, so adding a component leaves the others' orders
unchanged.
"""
import dataclasses
import hashlib
import math
import os

import numpy as np

from radjax.core import config_checks

KEYS = ('dir', 'tasks', 'weight', 'repeat', 'max_records', 'splits', 'kind', 'builder',
        'builder_kwargs')
KINDS = ('image', 'volume')


@dataclasses.dataclass(frozen=True)
class Component:
  name: str
  dir: str
  tasks: tuple[str, ...]
  weight: float
  repeat: int
  seed: int
  kind: str = 'image'
  max_records: int = 0  # 0: every record
  splits: tuple[str, ...] = ()  # (): the run's train split

  @property
  def knob(self) -> str:
    return f'config.data.mixture.{self.name}'


def component_seed(seed: int, name: str) -> int:
  """A stable (not Python's salted hash) function of the run's seed and the name."""
  digest = hashlib.sha256(f'{seed}/{name}'.encode()).digest()
  return int.from_bytes(digest[:4], 'little') % 2**31


def components(config) -> list[Component]:
  """The checked components of config.data.mixture; [] when it is empty. Errors name
  `config.data.mixture.<name>.<key>`."""
  out = []
  for name, spec in config.data.mixture.items():
    knob = f'config.data.mixture.{name}'
    data_dir = check_spec(name, spec)
    if not os.path.isdir(data_dir):
      raise FileNotFoundError(f'{knob}.dir: {data_dir!r} is not a directory')
    tasks = spec.get('tasks', config.data.tasks)
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) for t in tasks):
      raise ValueError(f'{knob}.tasks: expected a non-empty tuple of task names, got {tasks!r}')
    weight = spec.get('weight', 0.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or \
        not math.isfinite(weight) or weight < 0:
      raise ValueError(f'{knob}.weight: expected a finite number >= 0, got {weight!r}')
    repeat = spec.get('repeat', 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
      raise ValueError(f'{knob}.repeat: expected an integer >= 1, got {repeat!r}')
    max_records = spec.get('max_records', 0)
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 0:
      raise ValueError(f'{knob}.max_records: expected an integer >= 0 (0: every record), got '
                       f'{max_records!r}')
    splits = spec.get('splits', ())
    if not isinstance(splits, (tuple, list)) or \
        not all(isinstance(s, str) and s for s in splits) or len(set(splits)) < len(splits):
      raise ValueError(f"{knob}.splits: expected a tuple of distinct split names (e.g. "
                       f"('train', 'val')), or () for config.data.train_split; got {splits!r}")
    kind = spec.get('kind', 'image')
    out.append(Component(name, data_dir, tuple(tasks), float(weight), repeat,
                         component_seed(config.seed, name), kind, max_records, tuple(splits)))
  for kind in KINDS:
    same = [c for c in out if c.kind == kind]
    zero = [c for c in same if c.weight == 0]
    if zero and len(zero) < len(same):
      raise ValueError(f'{zero[0].knob}.weight: 0 (by size) while '
                       f'{", ".join(c.name for c in same if c.weight)} have positive weights; '
                       'give every component of a kind a weight, or none (all 0: by size x '
                       'repeat)')
  return out


def check_spec(name: str, spec) -> str:
  """A component's spec is a dict of known keys with a dir (before its dir is built or
  read: the errors name config.data.mixture.<name>); returns the dir."""
  check_shape(name, spec)
  if not spec.get('dir', ''):
    raise ValueError(f'config.data.mixture.{name}.dir: missing (the dataset folder of this '
                     'component)')
  return spec['dir']


def check_shape(name: str, spec) -> None:
  """What of a spec the batches' shapes depend on (its keys, its kind), with no dir: a
  dry run (bench/memory.py) needs no data."""
  knob = f'config.data.mixture.{name}'
  config_checks.check_keys(knob, spec, KEYS,
                           'dict(dir=..., tasks=(...), weight=..., repeat=...)')
  if spec.get('kind', 'image') not in KINDS:
    raise ValueError(f"{knob}.kind: {spec.get('kind')!r} is not one of {', '.join(KINDS)}")


def check_specs(config) -> None:
  for name, spec in config.data.mixture.items():
    check_spec(name, spec)


def kept_records(comp: Component, count: int) -> np.ndarray | None:
  """Which of its `count` training records `comp` reads: None for all of them, or with
  max_records=N below the count, N indices drawn without replacement by the component's
  seed (in record order)."""
  if not comp.max_records or comp.max_records >= count:
    return None
  rng = np.random.default_rng(comp.seed)
  return np.sort(rng.choice(count, size=comp.max_records, replace=False))


def by_kind(comps: list[Component]) -> dict[str, list[tuple[int, Component]]]:
  """(index in mixture.names, component) per kind present, in KINDS order."""
  out = {}
  for i, c in enumerate(comps):
    out.setdefault(c.kind, []).append((i, c))
  return {k: out[k] for k in KINDS if k in out}


def train_kinds(config) -> tuple[str, ...]:
  """The kinds of batch a training run is fed (pipeline.train_dataset batches each kind
  apart), in KINDS order, from the config alone (no dir is read): ('image',) without a
  mixture (config.data.dir), else the kinds of its components."""
  if not config.data.mixture:
    return ('image',)
  for name, spec in config.data.mixture.items():
    check_shape(name, spec)
  present = {spec.get('kind', 'image') for spec in config.data.mixture.values()}
  return tuple(k for k in KINDS if k in present)


def weights(comps: list[Component], sizes: list[int]) -> list[float]:
  """Each component's sampling probability (module docstring)."""
  for c, n in zip(comps, sizes):
    if n == 0:
      raise ValueError(f'{c.knob}.dir: {c.dir!r} has no records in its training split(s)')
  raw = [(c.weight or n) * c.repeat for c, n in zip(comps, sizes)]
  return [w / sum(raw) for w in raw]


def names(config) -> tuple[str, ...]:
  """The components' names by `source` index; () without a mixture."""
  return tuple(config.data.mixture.keys())


def eval_dir(config) -> str:
  """The default eval dataset: config.data.dir, or when that is '' the first component's
  dir (what an evaluator reads unless config.eval.datasets names its own)."""
  if config.data.dir or not config.data.mixture:
    return config.data.dir
  first = names(config)[0]
  return check_spec(first, config.data.mixture[first])


def eval_tasks(config) -> tuple[str, ...]:
  """The eval dataset's instruction tasks: config.data.tasks, or when config.data.dir is ''
  the first component's (a VQA-only component has no reports to evaluate on)."""
  if config.data.dir or not config.data.mixture:
    return tuple(config.data.tasks)
  first = names(config)[0]
  check_shape(first, config.data.mixture[first])
  return tuple(config.data.mixture[first].get('tasks', config.data.tasks))


def eval_knob(config) -> str:
  """The knob that names the eval dataset (for errors)."""
  if config.data.dir or not config.data.mixture:
    return 'config.data.dir'
  return f'config.data.mixture.{names(config)[0]}.dir'


def eval_kind(config) -> str:
  """'image' or 'volume': what the eval dataset holds (config.data.dir: images). From the
  config alone (the task's slots are built from it before any data is read)."""
  if config.data.dir or not config.data.mixture:
    return 'image'
  first = names(config)[0]
  check_shape(first, config.data.mixture[first])
  return config.data.mixture[first].get('kind', 'image')
