"""Train state and its born-sharded creation."""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from radjax import sharding as sharding_lib


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


def create_train_state(model, init_inputs: tuple, tx, rng, mesh, rules):
  """Abstract first, then every leaf created directly in its shard.

  Returns (state, state_shardings).
  """
  def init_params(key):
    return model.init(key, *init_inputs)['params']

  param_key, state_key = jax.random.split(rng)
  with sharding_lib.activation_rules(mesh, rules):
    boxed = jax.eval_shape(init_params, param_key)
  param_shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
  params_abstract = nn.meta.unbox(boxed)
  opt_abstract = jax.eval_shape(tx.init, params_abstract)
  state_shardings = TrainState(
      step=sharding_lib.replicated(mesh), params=param_shardings,
      opt_state=_suffix_sharding(opt_abstract, param_shardings, params_abstract, mesh),
      rng=sharding_lib.replicated(mesh))

  def init_state(key):
    params = nn.meta.unbox(init_params(key))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=state_key)

  with sharding_lib.activation_rules(mesh, rules):
    state = jax.jit(init_state, out_shardings=state_shardings)(param_key)
  return state, state_shardings


def abstract_state(state_shardings, state):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, state_shardings)
