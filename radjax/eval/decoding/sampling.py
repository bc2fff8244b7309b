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


def apply_top_p(logits, top_p: float, removed_mass=None):
  """Nucleus filter as HF's TopPLogitsWarper: drops the ascending-sorted tokens whose
  cumulative probability is <= 1 - top_p, always keeping the most likely one.
  removed_mass: 1 - top_p as a traced float32 (computed in Python, as HF's threshold is)."""
  order = jnp.argsort(logits, axis=-1)
  ascending = jnp.take_along_axis(logits, order, axis=-1)
  cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  threshold = 1 - top_p if removed_mass is None else removed_mass
  remove = (cum <= threshold).at[..., -1].set(False)
  # Scatter back to vocab order (a second argsort would double the cost of the sort).
  remove = jnp.put_along_axis(jnp.zeros_like(remove), order, remove, axis=-1, inplace=False)
  return jnp.where(remove, -jnp.inf, logits)


def knobs(temperature: float, top_p: float, repetition_penalty: float = 1.0) -> dict:
  """The decoding values a compiled generator takes as arguments (a new temperature or
  top-p compiles nothing): float32 scalars, 1 - top_p computed in Python as HF does."""
  return {'temperature': jnp.float32(temperature), 'removed_mass': jnp.float32(1 - top_p),
          'repetition_penalty': jnp.float32(repetition_penalty)}


def warp(logits, temperature: float, top_k: int, top_p: float, values: dict | None = None):
  """Temperature, then top-k, then top-p: the order HF applies its warpers in. The floats
  decide which apply; `values` (knobs()), when given, are the ones applied."""
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = apply_temperature(logits, temperature if values is None else values['temperature'])
  if top_k:
    logits = apply_top_k(logits, top_k)
  if top_p < 1.0:
    logits = apply_top_p(logits, top_p, None if values is None else values['removed_mass'])
  return logits


def sample_rows(row_keys, step, logits, temperature: float, top_k: int, top_p: float,
                values: dict | None = None):
  """One token id per row, row r drawn with fold_in(row_keys[r], step): a row's draws do not
  depend on which other rows share its batch, or where it sits in it."""
  warped = warp(logits, temperature, top_k, top_p, values)
  draw = lambda key, row: jax.random.categorical(jax.random.fold_in(key, step), row)
  return jax.vmap(draw)(row_keys, warped).astype(jnp.int32)


def row_keys(rng, batch: int, first: int = 0):
  """[batch] keys: `rng` itself when it already holds one key per row, else fold_in(rng, r)
  for r in first .. first + batch - 1 (an item's index in a list split into batches)."""
  if rng.shape == (batch,):
    return rng
  if rng.shape:
    raise ValueError(f'sampling needs one PRNG key or one per row ({batch}); got shape '
                     f'{rng.shape}')
  return jax.vmap(lambda r: jax.random.fold_in(rng, r))(jnp.arange(first, first + batch))
