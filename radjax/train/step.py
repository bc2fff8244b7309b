"""The jitted train and eval steps."""
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from radjax.models import layers
from radjax.train import loss as loss_lib
from radjax.train.state import TrainState


def forward_losses(model, params, batch, rng=None):
  logits, _ = model.apply({'params': params}, batch['tokens'], batch['images'],
                          rngs={'dropout': rng} if rng is not None else None)
  return loss_lib.token_losses(logits, batch['targets'], batch['loss_mask'])


def _split_micro(batch, num_micro: int):
  """[A*m, ...] -> [A, m, ...] with micro-batch i = rows i, A+i, 2A+i, ... so every
  micro-batch stays spread over all batch shards."""
  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(f'batch of {x.shape[0]} is not divisible by grad_accum={num_micro}')
    y = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)
    return layers.constrain(y, (None, 'act_batch') + (None,) * (x.ndim - 1))
  return jax.tree.map(split, batch)


def make_train_step(model, tx: optax.GradientTransformation, trainable, schedule,
                    grad_accum: int = 1) -> Callable[[TrainState, Any], tuple]:
  """train_step(state, batch) -> (state, metrics). Gradients of summed token losses
  are accumulated over micro-batches and divided once by the total token count."""

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def sums_and_grads(micro, key):
      def f(params):
        sums = forward_losses(model, params, micro, key)
        return sums['loss_sum'], sums
      (_, sums), grads = jax.value_and_grad(f, has_aux=True)(state.params)
      return sums, grads

    if grad_accum == 1:
      sums, grads = sums_and_grads(batch, rng)
    else:
      micro = _split_micro(batch, grad_accum)
      zero_sums = {k: jnp.zeros((), jnp.float32)
                   for k in ('loss_sum', 'correct_sum', 'weight_sum')}
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
        'loss': sums['loss_sum'] / denom,
        'accuracy': sums['correct_sum'] / denom,
        'tokens': sums['weight_sum'],
        'grad_norm': optax.tree.norm(grads),
        'update_norm': optax.tree.norm(updates),
        'param_norm': optax.tree.norm(params),
        'lr': schedule(state.step),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(model):
  def eval_step(params, batch):
    return forward_losses(model, params, batch)
  return eval_step
