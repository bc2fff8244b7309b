"""Masked next-token cross-entropy, summed (callers divide once by the token count)."""
import jax
import jax.numpy as jnp
import optax


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
  # Correct: the target is what greedy decoding picks, the first of a tie (a bf16 head
  # ties the top logit at ~5 % of positions; `target_logit >= max` counted each a hit).
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(nll * weights),
      'accuracy_sum': jnp.sum(correct * weights),
      'weight_sum': jnp.sum(weights),
  }


def target_positions(loss_mask, k: int):
  """[B, k] int32: each row's first k loss-bearing positions in order, then positions
  without loss (weight 0 at them), for logits computed only there (llm.Decoder logits_at).
  The data caps a row's loss tokens at k (config.data.max_target_tokens)."""
  return jnp.argsort(loss_mask <= 0, axis=1, stable=True)[:, :k].astype(jnp.int32)


def batch_token_losses(logits, batch, index=None):
  """token_losses against the batch's targets and loss_mask; with `index` [B, K] (the
  positions logits [B, K, V] were computed at) they are read there too."""
  targets, weights = batch['targets'], batch['loss_mask']
  if index is not None:
    targets, weights = (jnp.take_along_axis(a, index, axis=1) for a in (targets, weights))
  return token_losses(logits, targets, weights)


def box_token_losses(scores, targets, mask):
  """Per-token sigmoid cross-entropy of a label head's token scores [B, T, L] (the box
  labels' columns, patch tokens last) against box targets [B, P, L] with mask [B, L]:
  sums over examples of the mean over labels of each label's class-balanced loss.

  Balanced as edge and keypoint heads are: half the mean over the patches under a box,
  half the mean over the rest (an image without a box of the label: the mean over all).
  A nodule covers 1-2 of 64 patches, so a plain mean hardly sees it; on the demo the
  balanced form let the tower find nodules in 600 steps instead of ~1000.
  """
  scores = scores[:, -targets.shape[1]:].astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(scores, targets)  # [B, P, L]
  pos = jnp.sum(targets, axis=1)
  neg = targets.shape[1] - pos
  pos_mean = jnp.sum(bce * targets, axis=1) / jnp.maximum(pos, 1.0)
  neg_mean = jnp.sum(bce * (1 - targets), axis=1) / jnp.maximum(neg, 1.0)
  per_label = jnp.where(pos > 0, 0.5 * (pos_mean + neg_mean), neg_mean)  # [B, L]
  return {'loss_sum': jnp.sum(per_label * mask) / targets.shape[-1]}


def label_losses(logits, labels, mask):
  """Multi-label sigmoid cross-entropy: logits, labels [B, L]; mask [B] (0 = a record
  without labels). Sums over examples of the per-label mean; accuracy at p = 0.5."""
  logits = logits.astype(jnp.float32)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
  correct = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32), axis=-1)
  mask = mask.astype(jnp.float32)
  return {'loss_sum': jnp.sum(bce * mask), 'accuracy_sum': jnp.sum(correct * mask),
          'weight_sum': jnp.sum(mask)}


def label_head_losses(logits, scores, batch, box_indices=(), box_weight=0.0):
  """A LabelHead's loss: label_losses on logits [B, L], plus box_weight x box_token_losses
  on the token scores [B, T, L] of the labels at box_indices when box_weight > 0 (then
  'label_loss_sum' and 'box_loss_sum' are kept apart too)."""
  out = label_losses(logits, batch['labels'], batch['label_mask'])
  if not box_weight:
    return out
  mask = batch['box_mask'] * batch['label_mask'][:, None]
  box = box_token_losses(scores[..., jnp.asarray(box_indices)], batch['box_targets'], mask)
  out['label_loss_sum'] = out['loss_sum']
  out['box_loss_sum'] = box['loss_sum']
  out['loss_sum'] = out['loss_sum'] + box_weight * box['loss_sum']
  return out
