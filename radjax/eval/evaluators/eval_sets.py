"""config.eval.datasets: which dataset each evaluator reads.

    config.eval.datasets.<evaluator> = dict(component='', dir='', split='', max_records=0,
                                            seed=0)

An evaluator not listed reads the default eval dataset, as every evaluator did before this
knob: config.data.dir, or when that is '' the first mixture component
(radjax/data/mixture.py eval_dir). 'loss' is no exception: it reads the default dataset
unless listed (a mixture's held-out loss is then that dataset's, with its tasks).

- component: a config.data.mixture component, read with its tasks and kind; its folder
  is the component's dir, so `--config.data.mixture.<name>.dir=...` is given once.
- dir: a built dataset outside the mixture, read with config.data.tasks (images).
  At most one of the two; neither: the default eval dataset (split, max_records and seed
  still apply).
- split: the split to read instead of config.eval.split ('': config.eval.split), for a
  dataset without it (VinDr-CXR has train and test only). The scalars keep the names
  config.eval.split gives them (eval/<name>, or eval/test_<name> for --config.eval.split=test).
- max_records: N > 0 reads N records of the split drawn without replacement by `seed`,
  kept in record order (RadVLM's 2,000 Chest ImaGenome test images, seed 4); 0: all. The
  evaluator then reads them as it reads a split: the first config.eval.num_generate that
  serve its task, or config.eval.num_loss_batches batches.
- seed: the draw's seed; 0 by default and not config.seed, so the subset stays the same
  from run to run.

Scalars keep their names (eval/grounding_mAP@0.5 whatever it reads); `make` logs each
evaluator's dataset once. A name that is no evaluator, a component that is not in the
mixture or an unknown key is an error naming config.eval.datasets.<name>[.<key>].
"""
import dataclasses
import logging

import numpy as np

from radjax.core import config_checks
from radjax.data import mixture, source

KEYS = ('component', 'dir', 'split', 'max_records', 'seed')


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """What one evaluator reads: a dataset folder's split (or a fixed subset of it), the
  instruction tasks and kind of its records, and the knob that names the folder."""
  dir: str
  tasks: tuple[str, ...]
  kind: str
  split: str
  knob: str
  max_records: int = 0
  seed: int = 0
  given: bool = False  # listed in config.eval.datasets (else the default eval dataset)

  def records(self):
    """The split's records, or the subset max_records draws from them."""
    records = source.open_split(self.dir, self.split, self.knob)
    keep = subset(len(records), self.max_records, self.seed)
    return records if keep is None else source.SubsetSource(records, keep)

  def processor(self, task):
    """`task`'s processor for these records: the default one (the eval dataset's tasks and
    kind) for the default dataset, as before."""
    return task.processor(self.tasks, self.kind) if self.given else task.processor()

  def describe(self, count: int | None = None) -> str:
    out = f'{self.knob}={self.dir!r}, split {self.split!r}'
    if self.max_records:
      out += f', {self.max_records} records drawn with seed {self.seed}'
    if count is not None:
      out += f' ({count} records)'
    return out + f', tasks {", ".join(self.tasks)}'


def subset(count: int, max_records: int, seed: int) -> np.ndarray | None:
  """None (all `count` records), or with 0 < max_records < count that many indices drawn
  without replacement by `seed`, in record order."""
  if not max_records or max_records >= count:
    return None
  return np.sort(np.random.default_rng(seed).choice(count, size=max_records, replace=False))


def default(config, split: str) -> EvalSet:
  """The default eval dataset: config.data.dir, or when '' the first mixture component."""
  return EvalSet(mixture.eval_dir(config), mixture.eval_tasks(config),
                 mixture.eval_kind(config), split, mixture.eval_knob(config))


def specs(config) -> dict:
  given = config.eval.get('datasets', None)
  return dict(given.items()) if given else {}


def check(config, known) -> None:
  """Every entry of config.eval.datasets names an evaluator of `known` and is a valid
  spec (errors name the key)."""
  for name, spec in specs(config).items():
    if name not in known:
      raise ValueError(f'config.eval.datasets.{name}: not an evaluator (known: '
                       f'{", ".join(sorted(known))})')
    _checked(config, name, spec)


def _checked(config, name: str, spec) -> dict:
  knob = f'config.eval.datasets.{name}'
  config_checks.check_keys(knob, spec, KEYS, "dict(component='...') or dict(dir='...')")
  out = {k: spec.get(k, d) for k, d in zip(KEYS, ('', '', '', 0, 0))}
  for key in ('component', 'dir', 'split'):
    if not isinstance(out[key], str):
      raise ValueError(f'{knob}.{key}: expected a string, got {out[key]!r}')
  for key in ('max_records', 'seed'):
    value = out[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'{knob}.{key}: expected an integer >= 0, got {value!r}')
  if out['component'] and out['dir']:
    raise ValueError(f"{knob}: both component={out['component']!r} and dir={out['dir']!r}; "
                     'give one')
  if out['component'] and out['component'] not in mixture.names(config):
    raise ValueError(f"{knob}.component: {out['component']!r} is not a component of "
                     f"config.data.mixture ({', '.join(mixture.names(config)) or 'empty'})")
  return out


def resolve(config, name: str, split: str) -> EvalSet:
  """What evaluator `name` reads when config.eval.split is `split`."""
  spec = specs(config).get(name)
  if spec is None:
    return default(config, split)
  s = _checked(config, name, spec)
  split = s['split'] or split
  if s['component']:
    comp = s['component']
    comp_spec = config.data.mixture[comp]
    data_dir = mixture.check_spec(comp, comp_spec)
    tasks = tuple(comp_spec.get('tasks', config.data.tasks))
    kind, knob = comp_spec.get('kind', 'image'), f'config.data.mixture.{comp}.dir'
    if split in comp_spec.get('splits', ()):
      logging.warning('%s reads split %r of component %r, which trains on it (its splits: %s);'
                      ' give config.eval.datasets.%s.split another', name, split, comp,
                      ', '.join(comp_spec.get('splits')), name)
  elif s['dir']:
    data_dir, tasks = s['dir'], tuple(config.data.tasks)
    kind, knob = 'image', f'config.eval.datasets.{name}.dir'
  else:
    base = default(config, split)
    data_dir, tasks, kind, knob = base.dir, base.tasks, base.kind, base.knob
  return EvalSet(data_dir, tasks, kind, split, knob, s['max_records'], s['seed'], True)
