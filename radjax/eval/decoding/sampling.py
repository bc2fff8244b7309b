"""Logits warpers for sampling, in HF's order and with HF's boundary rules. Ties: top-k keeps
every logit tied with the k-th, as HF; top-p sorts stably, where torch's sort orders tied
logits by an order of its own, so the two may keep different members of a tie at the
nucleus boundary."""
import jax
import jax.numpy as jnp


def apply_temperature(logits, temperature: float):
  return logits / temperature


def apply_top_k(logits, k: int):
  """Keeps the k largest logits per row and any tied with the k-th (as HF's TopKLogitsWarper)."""
  k = min(k, logits.shape[-1])
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, -jnp.inf, logits)


def apply_top_p(logits, top_p: float):
  """Nucleus filter as HF's TopPLogitsWarper: drops the ascending-sorted tokens whose
  cumulative probability is <= 1 - top_p, always keeping the most likely one."""
  order = jnp.argsort(logits, axis=-1)
  ascending = jnp.take_along_axis(logits, order, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  remove = (cum <= 1 - top_p).at[..., -1].set(False)
  # Scatter back to vocab order (a second argsort would double the cost of the sort).
  remove = jnp.put_along_axis(jnp.zeros_like(remove), order, remove, axis=-1, inplace=False)
  return jnp.where(remove, -jnp.inf, logits)


def warp(logits, temperature: float, top_k: int, top_p: float):
  """Temperature, then top-k, then top-p: the order HF applies its warpers in."""
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = apply_temperature(logits, temperature)
  if top_k:
    logits = apply_top_k(logits, top_k)
  if top_p < 1.0:
    logits = apply_top_p(logits, top_p)
  return logits


def sample(rng, logits, temperature: float, top_k: int, top_p: float):
  """One token id per row from the warped distribution."""
  warped = warp(logits, temperature, top_k, top_p)
  return jax.random.categorical(rng, warped, axis=-1).astype(jnp.int32)
