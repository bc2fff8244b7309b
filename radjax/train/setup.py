"""Everything a run needs, built once from the config and a task: mesh, model,
optimizer, born-sharded state and the jitted train step. Generic over tasks."""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
from absl import logging

from radjax.core import config_checks
from radjax.core import sharding as sharding_lib
from radjax.data import mixture
from radjax.models import factory, layers
from radjax.train import optimizer as optimizer_lib
from radjax.train import state as state_lib


@dataclasses.dataclass
class Experiment:
  config: Any
  task: Any  # radjax.tasks.Task
  mesh: Any
  rules: tuple
  model: nn.Module
  labels: Any
  tx: Any
  schedule: Any
  state: state_lib.TrainState
  state_shardings: Any
  batch_shardings: dict

  def context(self):
    return sharding_lib.activation_rules(self.mesh, self.rules)


def preflight(config, devices=None, train: bool = True) -> tuple:
  """(mesh, rules) after the checks that cost nothing: config values, the backend, batch
  sizes over the mesh (optim.grad_accum first derived for it: train.micro_batch_per_device).
  `train=False` (evaluation, generation) checks eval.batch_size only."""
  config_checks.check(config)
  factory.check_backend(config)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  rules = sharding_lib.rules_from_config(config.sharding.rules)
  if train:
    derive_grad_accum(config, sharding_lib.batch_axes(mesh, rules)[1])
  _check_batch_sizes(config, mesh, rules, train)
  return mesh, rules


def build(config, task, devices=None, pretrained: bool = True, train: bool = True
          ) -> Experiment:
  """`pretrained=False` skips `init_from` loading (the state is about to be restored).
  `train=False` allocates nothing: the state holds only the params' abstract target
  (no optimizer moments), for evaluation or generation to restore into."""
  mesh, rules = preflight(config, devices, train)
  if train:  # a codec workdir trained before this check still evaluates
    _check_accumulation(config, task)
  inputs = task.init_inputs()
  model = task.model()
  boxed_shape = jax.eval_shape(lambda k: model.init(k, *inputs)['params'], jax.random.key(0))
  sharding_lib.check_rule_names(rules, boxed_shape, layers.ACTIVATION_AXES)
  params_shape = nn.meta.unbox(boxed_shape)
  labels = optimizer_lib.param_labels(params_shape, config.optim.param_groups)
  frozen = tuple(p for p in task.parts_frozen(labels))
  if frozen:
    model = task.model(frozen)
  tx, schedule = task.optimizer(labels)
  if train:
    state, state_shardings = state_lib.create_train_state(
        model, inputs, tx, jax.random.key(config.seed), mesh, rules,
        task.pretrained_loaders() if pretrained else None,
        task.pretrained_fresh() if pretrained else None)
  else:
    target, shardings = state_lib.abstract_params(model, inputs, mesh, rules)
    state = state_lib.TrainState(step=None, params=target, opt_state=None, rng=None)
    state_shardings = state_lib.TrainState(step=None, params=shardings, opt_state=None,
                                           rng=None)
  sharding_lib.warn_replicated(state.params, state_shardings.params,
                               config.sharding.replicated_warn_mib)
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, rules, len(f.shape) + 1)
                     for k, f in task.batch_spec().items()}
  return Experiment(config=config, task=task, mesh=mesh, rules=rules, model=model,
                    labels=labels, tx=tx, schedule=schedule, state=state,
                    state_shardings=state_shardings, batch_shardings=batch_shardings)


def jit_train_step(exp: Experiment):
  """The one jitted train step (explicit shardings, donated state) of a task; the
  loop, the benchmark and the tests share it."""
  step = exp.task.train_step(exp.model, exp.tx, exp.labels, exp.schedule)
  return jax.jit(step, in_shardings=(exp.state_shardings, batch_prefix_sharding(exp)),
                 out_shardings=(exp.state_shardings, None), donate_argnums=0)


def batch_prefix_sharding(exp: Experiment):
  """One sharding for every array of a batch (leading axis over the batch mesh axes), so
  batches of different keys (a volume batch's depth_mask) share the jitted function."""
  return sharding_lib.batch_sharding(exp.mesh, exp.rules, 1)


def _check_batch_sizes(config, mesh, rules, train: bool = True) -> None:
  """Every batch (and micro-batch) splits evenly over the mesh axes the batch is sharded on."""
  axes, shards = sharding_lib.batch_axes(mesh, rules)
  sharding_lib.check_batch_over_processes(mesh.devices, axes)
  knobs = ['train.batch_size', 'eval.batch_size'] if train else ['eval.batch_size']
  if train and 'volume' in mixture.train_kinds(config):
    knobs.append('data.volume_batch_size')
  for knob in knobs:
    section, key = knob.split('.')
    value = config[section][key]
    if value % shards:
      raise ValueError(f'config.{knob}={value} does not split over the {shards} batch shards '
                       f'of the mesh ({" x ".join(axes)}); use a multiple of {shards}')
    accum = config.optim.grad_accum
    if knob != 'eval.batch_size' and accum > 1 and value % (accum * shards):
      # XLA would gather such a micro-batch onto every device and split it again.
      raise ValueError(
          f'config.{knob}={value} as config.optim.grad_accum={accum} micro-batches does not '
          f'split over the {shards} batch shards of the mesh ({" x ".join(axes)}): use a '
          f'multiple of {accum * shards}, another grad_accum, or '
          'config.train.micro_batch_per_device')


def _check_accumulation(config, task) -> None:
  """A task whose step takes its batch whole refuses micro-batches, also those that
  train.micro_batch_per_device derives here (after the task was made): it would run the
  whole batch on each device's share, with none of the memory that knob asked for."""
  accum = config.optim.grad_accum
  if accum == 1 or task.accumulates:
    return
  per = config.train.get('micro_batch_per_device', 0)
  how = f' (derived from config.train.micro_batch_per_device={per})' if per else ''
  raise ValueError(f'config.optim.grad_accum={accum}{how}: the {task.name} task takes one '
                   'batch per step; set micro_batch_per_device=0 and grad_accum=1, and size '
                   'config.train.batch_size to the memory instead')


def derive_grad_accum(config, shards: int) -> None:
  """config.optim.grad_accum from config.train.micro_batch_per_device (when > 0): the
  micro-batches of train.batch_size that give each of the mesh's batch shards that many
  examples. Overwrites grad_accum, so a workdir's config resumed on another device count
  derives its own."""
  per = config.train.get('micro_batch_per_device', 0)
  if not per:
    return
  batch = config.train.batch_size
  if batch % (per * shards):
    raise ValueError(
        f'config.train.batch_size={batch} is not a multiple of config.train.'
        f"micro_batch_per_device={per} x the mesh's {shards} batch shards ({per * shards}): "
        'change either, or set micro_batch_per_device=0 and config.optim.grad_accum')
  accum = batch // (per * shards)
  if accum != config.optim.grad_accum:
    logging.info('config.optim.grad_accum=%d: %d examples per step as %d micro-batches of '
                 '%d per batch shard (train.micro_batch_per_device)', accum, batch, accum, per)
  config.optim.grad_accum = accum
