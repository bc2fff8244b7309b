"""Masked next-token cross-entropy, summed (callers divide once by the token count)."""
import jax
import jax.numpy as jnp


def token_losses(logits, targets, weights):
  """logits [B, T, V] f32 predicting targets [B, T]; weights [B, T] (0 = ignore).

  Returns sums, so accumulation over micro-batches divides once at the end.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(nll * weights),
      'accuracy_sum': jnp.sum(correct * weights),
      'weight_sum': jnp.sum(weights),
  }


def label_losses(logits, labels, mask):
  """Multi-label sigmoid cross-entropy: logits, labels [B, L]; mask [B] (0 = a record
  without labels). Sums over examples of the per-label mean; accuracy at p = 0.5."""
  logits = logits.astype(jnp.float32)
  bce = jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))),
                 axis=-1)
  correct = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32), axis=-1)
  mask = mask.astype(jnp.float32)
  return {'loss_sum': jnp.sum(bce * mask), 'accuracy_sum': jnp.sum(correct * mask),
          'weight_sum': jnp.sum(mask)}
