"""Masked next-token cross-entropy, summed (callers divide once by the token count)."""
import jax
import jax.numpy as jnp


def token_losses(logits, targets, weights):
  """logits [B, T, V] f32 predicting targets [B, T]; weights [B, T] (0 = ignore).

  Returns sums, so accumulation over micro-batches divides once at the end.
  """
  logits = logits.astype(jnp.float32)
  # log-sum-exp minus the target's logit, picked by a comparison rather than a gather:
  # the gather's gradient is a scatter into a zeroed [B, T, V], slow on CPU; this one is
  # elementwise (softmax - one-hot) and fuses.
  is_target = jnp.arange(logits.shape[-1]) == targets[..., None]
  target_logit = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
  weights = weights.astype(jnp.float32)
  # The target is the argmax when its logit is the row's maximum (no separate argmax pass;
  # a tie counts as correct).
  correct = (target_logit >= jnp.max(logits, axis=-1)).astype(jnp.float32)
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
