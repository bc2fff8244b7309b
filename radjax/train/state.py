"""Train state and its born-sharded creation."""
import re
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from radjax.core import sharding as sharding_lib
from radjax.train import optimizer as optimizer_lib

# `pretrained` key for a loader of the whole parameter tree.
WHOLE = ''


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # folded with the step inside train_step


def _suffix_sharding(opt_abstract, param_shardings, param_shapes, mesh):
  """Optimizer leaves (moments) take the sharding of the parameter whose path ends
  theirs and whose shape they share; everything else (counts) is replicated."""
  by_path = {}
  for (path, sh), shape in zip(
      jax.tree_util.tree_flatten_with_path(
          param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0],
      jax.tree.leaves(param_shapes)):
    by_path[tuple(str(k) for k in path)] = (sh, shape.shape)

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for i in range(len(keys)):
      hit = by_path.get(keys[i:])
      if hit and hit[1] == leaf.shape:
        return hit[0]
    return sharding_lib.replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, opt_abstract)


def abstract_params(model, init_inputs: tuple, mesh, rules):
  """(ShapeDtypeStructs with shardings, shardings) of the model's params; nothing is
  allocated. The restore target when params come from a checkpoint, not an init."""
  with sharding_lib.activation_rules(mesh, rules):
    boxed = jax.eval_shape(lambda k: model.init(k, *init_inputs)['params'], jax.random.key(0))
  shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
  return abstract_state(shardings, nn.meta.unbox(boxed)), shardings


def _state_shardings(tx, params_abstract, param_shardings, mesh) -> TrainState:
  opt_abstract = jax.eval_shape(tx.init, params_abstract)
  return TrainState(
      step=sharding_lib.replicated(mesh), params=param_shardings,
      opt_state=_suffix_sharding(opt_abstract, param_shardings, params_abstract, mesh),
      rng=sharding_lib.replicated(mesh))


def abstract_train_state(model, init_inputs: tuple, tx, mesh, rules):
  """(the TrainState as ShapeDtypeStructs carrying their shardings, its shardings), as
  create_train_state would make it; nothing is allocated (memory analysis of big models)."""
  params_abstract, param_shardings = abstract_params(model, init_inputs, mesh, rules)
  shardings = _state_shardings(tx, params_abstract, param_shardings, mesh)
  shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params_abstract,
                      opt_state=jax.eval_shape(tx.init, params_abstract),
                      rng=jax.eval_shape(lambda: jax.random.key(0)))
  return abstract_state(shardings, shapes), shardings


def create_train_state(model, init_inputs: tuple, tx, rng, mesh, rules, pretrained=None,
                       fresh=None):
  """Abstract first, then every leaf created directly in its shard.

  `pretrained` maps top-level param names (e.g. 'llm', 'vision'; WHOLE for the whole
  tree) to loaders that take
  that subtree's abstract target (ShapeDtypeStructs with shardings) and return its
  arrays. Those subtrees are loaded, not initialised: the jitted init only returns
  the other leaves, so XLA never computes (or holds) random values for them.
  `fresh` maps some of those names to a regex of their params ('a/b' paths inside the
  subtree, re.fullmatch) that keep their initialisation: a loader may leave them out or
  hold them at any shape.

  Returns (state, state_shardings).
  """
  def init_params(key):
    return model.init(key, *init_inputs)['params']

  param_key, state_key = jax.random.split(rng)
  params_abstract, param_shardings = abstract_params(model, init_inputs, mesh, rules)
  state_shardings = _state_shardings(tx, params_abstract, param_shardings, mesh)

  if pretrained:
    state = _state_with_pretrained(init_params, param_key, state_key, tx, pretrained,
                                   params_abstract, state_shardings, mesh, rules, fresh or {})
    return state, state_shardings

  def init_state(key):
    params = nn.meta.unbox(init_params(key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_key)

  return sharding_lib.born_sharded(init_state, state_shardings, mesh, rules, param_key), \
      state_shardings


def _subtree(tree, name: str):
  return tree if name == WHOLE else tree[name]


def _matching(tree, regex: str) -> dict:
  """{'a/b' path: leaf} of the leaves whose path fullmatches `regex`."""
  rx = re.compile(regex)
  return {optimizer_lib.path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
          if rx.fullmatch(optimizer_lib.path_str(p))}


def _fresh_leaves(init_params, param_key, fresh: dict, state_shardings, mesh, rules) -> dict:
  """{part: {'a/b' path: initial value}} of the leaves `fresh` names ({part: regex})."""
  shardings = {}
  for name, regex in fresh.items():
    shardings[name] = _matching(_subtree(state_shardings.params, name), regex)
    if not shardings[name]:
      raise ValueError(f'config.model.{name or "<part>"}.init_fresh={regex!r} matches none of '
                       'its parameters')
    logging.warning('config.model.%s.init_fresh=%r: %s start from their initialisation, not '
                    'from init_from', name or '<part>', regex, sorted(shardings[name]))

  def init_some(key):
    full = nn.meta.unbox(init_params(key))
    return {n: _matching(_subtree(full, n), fresh[n]) for n in fresh}

  return sharding_lib.born_sharded(init_some, shardings, mesh, rules, param_key)


def _state_with_pretrained(init_params, param_key, state_key, tx, pretrained, params_abstract,
                           state_shardings, mesh, rules, fresh_leaves: dict):
  unknown = sorted(set(fresh_leaves) - set(pretrained))
  if unknown:
    raise ValueError(f'init_fresh for {unknown}, which nothing is loaded into')
  # Made before loading: the loaded tree need not hold these, at any shape.
  new = (_fresh_leaves(init_params, param_key, fresh_leaves, state_shardings, mesh, rules)
         if fresh_leaves else {})
  if WHOLE in pretrained:  # a model that is one part (a bare decoder)
    target = abstract_state(state_shardings.params, params_abstract)
    params = place(pretrained[WHOLE](target), target, 'model', new.get(WHOLE))
  else:
    unknown = sorted(set(pretrained) - set(params_abstract))
    if unknown:
      raise ValueError(f'pretrained parts {unknown} are not in the model '
                       f'({sorted(params_abstract)})')
    fresh = [k for k in params_abstract if k not in pretrained]

    def init_fresh(key):
      params = nn.meta.unbox(init_params(key))
      return {k: params[k] for k in fresh}

    params = sharding_lib.born_sharded(
        init_fresh, {k: state_shardings.params[k] for k in fresh}, mesh, rules, param_key)
    for name, load in pretrained.items():
      target = abstract_state(state_shardings.params[name], params_abstract[name])
      params[name] = place(load(target), target, name, new.get(name))
  opt_state = jax.jit(tx.init, out_shardings=state_shardings.opt_state)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), state_shardings.step),
                    params=params, opt_state=opt_state,
                    rng=jax.device_put(state_key, state_shardings.rng))


def place(tree, target, name: str, fresh: dict | None = None):
  """Host or device arrays -> arrays with the target's shapes, dtypes and shardings.
  `fresh` ({'a/b' path: placed array}) gives leaves whatever `tree` holds for them."""
  keystr, fresh = jax.tree_util.keystr, fresh or {}
  given = {p: x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
           if optimizer_lib.path_str(p) not in fresh}
  wanted = jax.tree_util.tree_flatten_with_path(target)[0]
  missing = sorted(keystr(p) for p, _ in wanted
                   if p not in given and optimizer_lib.path_str(p) not in fresh)
  extra = sorted(keystr(p) for p in set(given) - {p for p, _ in wanted})
  if missing or extra:
    raise ValueError(f'pretrained {name}: missing params {missing}, unexpected {extra}')
  out = []
  for path, want in wanted:
    if optimizer_lib.path_str(path) in fresh:
      out.append(fresh[optimizer_lib.path_str(path)])
      continue
    arr = given[path]
    if tuple(arr.shape) != tuple(want.shape):
      raise ValueError(f'pretrained {name}{keystr(path)} has shape {tuple(arr.shape)}, the '
                       f'model needs {tuple(want.shape)}')
    if isinstance(arr, jax.Array) and arr.sharding == want.sharding:
      out.append(arr.astype(want.dtype))
    else:
      host = np.asarray(arr, want.dtype)
      out.append(jax.make_array_from_callback(want.shape, want.sharding, lambda i, h=host: h[i]))
  return jax.tree.unflatten(jax.tree.structure(target), out)


def abstract_state(state_shardings, state):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, state_shardings)
