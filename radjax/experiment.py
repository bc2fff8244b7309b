"""Everything a run needs, built once from the config: mesh, data, model, state."""
import dataclasses
import importlib
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from radjax.core import config_checks
from radjax.core import sharding as sharding_lib
from radjax.data import pipeline, tokens
from radjax.models import factory, vlm
from radjax.train import optimizer as optimizer_lib
from radjax.train import pretrained as pretrained_lib
from radjax.train import state as state_lib
from radjax.train import step as step_lib

BATCH_KEYS_NDIM = {'tokens': 2, 'targets': 2, 'loss_mask': 2, 'images': 5, 'image_mask': 2}


def ensure_data(config):
  """Builds the configured dataset when its manifest is missing (process 0 builds)."""
  if os.path.exists(os.path.join(config.data.dir, 'manifest.json')):
    return
  if not config.data.builder:
    raise FileNotFoundError(f'config.data.dir={config.data.dir!r} has no manifest.json and '
                            'config.data.builder is empty')
  if jax.process_index() == 0:
    builder = importlib.import_module(f'data_prep.{config.data.builder}')
    logging.info('building dataset %s into %s', config.data.builder, config.data.dir)
    builder.ensure_built(config.data.dir, **config.data.builder_kwargs.to_dict())
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('radjax_data_built')


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: Any
  rules: tuple
  encoder: tokens.TurnEncoder
  processor: pipeline.ExampleProcessor
  model: vlm.VLM
  labels: Any
  tx: Any
  schedule: Any
  state: state_lib.TrainState
  state_shardings: Any
  batch_shardings: dict

  def context(self):
    return sharding_lib.activation_rules(self.mesh, self.rules)


def _dummy_inputs(config):
  v = config.model.vision
  return (jnp.zeros((1, config.data.max_len), jnp.int32),
          jnp.zeros((1, config.data.max_images, v.image_size, v.image_size, v.num_channels),
                    jnp.float32))


def build_model_and_state(config, devices=None, pretrained: bool = True,
                          train: bool = True) -> dict:
  """Mesh, model, optimizer and born-sharded state: everything but the data.

  `pretrained=False` skips `init_from` loading (the state is about to be restored).
  `train=False` allocates nothing: the state holds only the params' abstract target
  (no optimizer moments), for evaluation or generation to restore into.
  """
  if config.model.kind != 'vlm':
    raise ValueError(f"config.model.kind={config.model.kind!r}: runs build a 'vlm'; a single "
                     'tower is for export (`python -m radjax.convert to-hf`) or init_from')
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  rules = sharding_lib.rules_from_config(config.sharding.rules)
  model = vlm.VLM(factory.vlm_config(config.model))
  params_shape = nn.meta.unbox(jax.eval_shape(
      lambda k: model.init(k, *_dummy_inputs(config))['params'], jax.random.key(0)))
  labels = optimizer_lib.param_labels(params_shape, config.optim.param_groups)
  if all(lab == optimizer_lib.FROZEN for lab in jax.tree.leaves(labels['vision'])):
    model = vlm.VLM(factory.vlm_config(config.model, freeze_vision=True))
  tx, schedule = optimizer_lib.make_optimizer(config.optim, config.train.num_steps, labels)
  if train:
    state, state_shardings = state_lib.create_train_state(
        model, _dummy_inputs(config), tx, jax.random.key(config.seed), mesh, rules,
        pretrained_lib.loaders(config) if pretrained else None)
  else:
    target, shardings = state_lib.abstract_params(model, _dummy_inputs(config), mesh, rules)
    state = state_lib.TrainState(step=None, params=target, opt_state=None, rng=None)
    state_shardings = state_lib.TrainState(step=None, params=shardings, opt_state=None,
                                           rng=None)
  sharding_lib.warn_replicated(state.params, state_shardings.params,
                               config.sharding.replicated_warn_mib)
  batch_shardings = {k: sharding_lib.batch_sharding(mesh, rules, n)
                     for k, n in BATCH_KEYS_NDIM.items()}
  return dict(mesh=mesh, rules=rules, model=model, labels=labels, tx=tx, schedule=schedule,
              state=state, state_shardings=state_shardings, batch_shardings=batch_shardings)


def jit_train_step(config, parts: dict):
  """The one jitted train step (explicit shardings, donated state) for
  `build_model_and_state`'s parts; the loop, the benchmark and the tests share it."""
  trainable = optimizer_lib.trainable_mask(parts['labels'])
  step = step_lib.make_train_step(parts['model'], parts['tx'], trainable, parts['schedule'],
                                  config.optim.grad_accum)
  return jax.jit(step, in_shardings=(parts['state_shardings'], parts['batch_shardings']),
                 out_shardings=(parts['state_shardings'], None), donate_argnums=0)


def build(config, devices=None, pretrained: bool = True, need_data: bool = True,
          train: bool = True) -> Experiment:
  """`need_data=False` (reporting on given images) only needs the tokenizer; for
  `pretrained` and `train` see build_model_and_state."""
  config_checks.check(config)
  if need_data:
    ensure_data(config)
  tokenizer = tokens.load_tokenizer(tokens.tokenizer_path(config))
  if len(tokenizer) > config.model.llm.vocab_size:
    raise ValueError(f'config.model.llm.vocab_size={config.model.llm.vocab_size} is smaller '
                     f'than the tokenizer ({len(tokenizer)} tokens)')
  image_token = tokenizer.convert_tokens_to_ids(tokens.SPECIALS['image'])
  if image_token != config.model.image_token_id:
    raise ValueError(f'config.model.image_token_id={config.model.image_token_id} but the '
                     f'tokenizer has <image> = {image_token}')
  parts = build_model_and_state(config, devices, pretrained, train)
  encoder = tokens.TurnEncoder(tokenizer, parts['model'].cfg.vision.num_tokens)
  processor = pipeline.make_processor(config, encoder)
  return Experiment(config=config, encoder=encoder, processor=processor, **parts)
