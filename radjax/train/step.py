"""The train step: one optimizer, gradient accumulation, metrics."""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from radjax.models import layers
from radjax.train.state import TrainState


def _split_micro(batch, num_micro: int):
  """[A*m, ...] -> [A, m, ...] with micro-batch i = rows i, A+i, 2A+i, ... so every
  micro-batch stays spread over all batch shards."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f'batch of {x.shape[0]} is not divisible by grad_accum={num_micro}')
    y = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    return layers.constrain(y, (None, 'act_batch') + (None,) * (x.ndim - 1))
  return jax.tree.map(split, batch)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, trainable, schedule,
                    grad_accum: int = 1) -> Callable[[TrainState, Any], tuple]:
  """train_step(state, batch) -> (state, metrics) for one optimizer over all params.

  `loss_fn(params, batch, rng)` returns sums ({'loss_sum', 'weight_sum', ...}, a
  task's loss); gradients of the summed loss are accumulated over micro-batches and
  divided once by the total weight. A task with several optimizers builds its own step.
  """

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def sums_and_grads(micro, key):
      def f(params):
        sums = loss_fn(params, micro, key)
        return sums['loss_sum'], sums
      (_, sums), grads = jax.value_and_grad(f, has_aux=True)(state.params)
      return sums, grads

    if grad_accum == 1:
      sums, grads = sums_and_grads(batch, rng)
    else:
      micro = _split_micro(batch, grad_accum)
      sums_shape = jax.eval_shape(lambda: loss_fn(state.params, jax.tree.map(
          lambda x: x[0], micro), rng))
      zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
      zero = (zero_sums, jax.tree.map(jnp.zeros_like, state.params))

      def body(acc, xs):
        mb, i = xs
        s, g = sums_and_grads(mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (s, g)), None
      (sums, grads), _ = jax.lax.scan(body, zero, (micro, jnp.arange(grad_accum)))

    denom = jnp.maximum(sums['weight_sum'], 1.0)
    grads = jax.tree.map(lambda g, t: g / denom if t else jnp.zeros_like(g),
                         grads, trainable)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **{k[:-len('_sum')]: v / denom for k, v in sums.items()
           if k.endswith('_sum') and k != 'weight_sum'},
        'tokens': sums['weight_sum'],
        'grad_norm': optax.tree.norm(grads),
        'update_norm': optax.tree.norm(updates),
        'param_norm': optax.tree.norm(params),
        'lr': schedule(state.step),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step
