"""Beam search with static shapes, step for step the algorithm of HF transformers v5
(`GenerationMixin._beam_search`), so it returns the same hypotheses and scores.

Per prompt it keeps `num_beams` running beams and `num_beams` finished hypotheses. Each
step takes the top `beams_to_keep` continuations over all beams; the best ones that hit a
stop token, complete a stop string (HF's StopStringCriteria) or reach the length limit
may enter the finished set with score sum(log p) / generated_length ** length_penalty
(generated_length counts the token that stopped it), and the best ones that did not
become the next running beams. The loop ends when HF's does: no prompt's finished set can
improve, every one is full (early_stopping=True), or every candidate of the batch stopped.

Rows are batch-major (row = b * num_beams + beam) so the leading axis stays shardable
on the batch mesh axes; cache reordering is a gather within each prompt's beams.
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from radjax.eval.decoding import repetition
from radjax.eval.decoding import stop_strings as stop_strings_lib

NEG = -1.0e9  # HF's "impossible" score; added, not assigned, as HF does


def _gather(x, index):
  """x [B, C, ...], index [B, K] -> [B, K, ...]."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def reorder_cache(cache, origin):
  """Cache leaves [L, B*K, ...]; origin [B, K] beam ids within each prompt."""
  b, k = origin.shape

  def one(c):
    c = c.reshape(c.shape[0], b, k, *c.shape[2:])
    index = origin.reshape(1, b, k, *(1,) * (c.ndim - 3))
    return jnp.take_along_axis(c, index, axis=2).reshape(c.shape[0], b * k, *c.shape[3:])

  return jax.tree.map(one, cache)


def beam_search(decode: Callable, logits, cache, key_mask, positions, prompt_len: int,
                max_new_tokens: int, num_beams: int, length_penalty: float,
                early_stopping, stop_ids: tuple[int, ...], pad_id: int,
                process: Optional[Callable] = None, seen=None,
                repetition_penalty: float = 1.0, stop_table=None):
  """Beam search from a prefilled prompt.

  decode(tokens [R], positions [R], cache, cache_index, key_mask) -> (logits [R, V], cache)
  logits [B, V] (the prompt's last position); cache leaves [L, B, ...]; key_mask [B, S];
  positions [B] (the position of the first generated token).
  process(log_probs [R, V], step) -> log_probs with the ids that step may not emit at
  -inf, applied after the softmax as HF applies its logits processors in beam search.
  seen [B, V]: the prompt ids the repetition penalty starts from (None: no penalty); each
  beam's mask follows it through the reordering, as HF penalises its running sequences.
  stop_table: the stop strings' matcher (stop_strings.table), or None; each beam carries
  its state, and a candidate takes the state of the beam it extends.
  Returns (ids [B, max_new_tokens] of the best finished hypothesis, pad after its stop
  token; its length-penalised score [B]).
  """
  b, v = logits.shape
  k, n = num_beams, max_new_tokens
  c = max(2, 1 + len(stop_ids)) * k  # enough candidates that k of them are still running
  # generated_length ** length_penalty, in float64 then float32 as HF's python scalar is
  penalty = jnp.asarray(np.arange(1, n + 1, dtype=np.float64) ** length_penalty, jnp.float32)
  best_len = n - 1 if (early_stopping == 'never' and length_penalty > 0.0) else None
  stops = jnp.asarray(stop_ids, jnp.int32)
  top_k_mask = jnp.arange(c) < k

  state = dict(
      cache=jax.tree.map(lambda x: jnp.repeat(x, k, axis=1), cache),
      logits=jnp.repeat(logits, k, axis=0),
      key_mask=jnp.repeat(key_mask, k, axis=0),
      positions=jnp.repeat(positions, k, axis=0),
      run_ids=jnp.full((b, k, n), pad_id, jnp.int32),
      # only beam 0 is live at first, so the k beams do not all pick the same tokens
      run_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(NEG),
      fin_ids=jnp.full((b, k, n), pad_id, jnp.int32),
      fin_scores=jnp.full((b, k), NEG, jnp.float32),
      fin=jnp.zeros((b, k), bool),
      improvable=jnp.ones((b,), bool),
      seen=None if seen is None else jnp.repeat(seen, k, axis=0),
      matched=None if stop_table is None else jnp.full((b, k), stop_strings_lib.START, jnp.int32),
      i=jnp.int32(0),
      going=jnp.bool_(True),
  )

  def step(s):
    i = s['i']
    logp = jax.nn.log_softmax(s['logits'].astype(jnp.float32), axis=-1)
    if s['seen'] is not None:  # HF's first processor, on the log-probs in beam search
      logp = repetition.penalize(logp, s['seen'], repetition_penalty)
    if process is not None:
      logp = process(logp, i)
    logp = logp.reshape(b, k, v)
    logp = (logp + s['run_scores'][..., None]).reshape(b, k * v)
    top_scores, top_index = jax.lax.top_k(logp, c)
    origin, tokens = top_index // v, (top_index % v).astype(jnp.int32)
    cand = _gather(s['run_ids'], origin)
    cand = jax.lax.dynamic_update_slice_in_dim(cand, tokens[..., None], i, axis=2)
    hits = jnp.isin(tokens, stops) | (i == n - 1)
    matched = None
    if stop_table is not None:
      matched = stop_table[_gather(s['matched'], origin), tokens]  # [B, C]
      hits = hits | (matched == stop_strings_lib.MATCHED)

    # Next running beams: the best candidates that did not finish.
    run_cand = top_scores + hits.astype(jnp.float32) * NEG
    sel = jax.lax.top_k(run_cand, k)[1]
    run_ids, run_scores = _gather(cand, sel), _gather(run_cand, sel)
    run_origin = _gather(origin, sel)
    if matched is not None:
      matched = _gather(matched, sel)

    # Finished set: merge the just-finished among the top k candidates, keep the best k.
    just = hits & top_k_mask[None]
    fin_cand = top_scores / penalty[i]
    if early_stopping is True:
      full = jnp.all(s['fin'], axis=1, keepdims=True)
      fin_cand = fin_cand + full.astype(jnp.float32) * NEG
    fin_cand = fin_cand + (~s['improvable'])[:, None].astype(jnp.float32) * NEG
    fin_cand = fin_cand + (~just).astype(jnp.float32) * NEG
    merged = jnp.concatenate([s['fin_scores'], fin_cand], axis=1)
    keep = jax.lax.top_k(merged, k)[1]
    fin_ids = _gather(jnp.concatenate([s['fin_ids'], cand], axis=1), keep)
    fin_scores = _gather(merged, keep)
    fin = _gather(jnp.concatenate([s['fin'], just], axis=1), keep)

    # Can the best running beam still beat the worst finished one? (HF's heuristic)
    best = run_scores[:, :1] / penalty[i if best_len is None else best_len]
    worst = jnp.where(fin, jnp.min(fin_scores, axis=1, keepdims=True), NEG)
    improvable = s['improvable'] & jnp.any(best > worst, axis=1)
    # HF's _beam_search_has_unfinished_sequences, over the whole batch
    going = jnp.any(improvable) & ~jnp.all(hits)
    if early_stopping is True:
      going = going & ~jnp.all(fin)

    cache = reorder_cache(s['cache'], run_origin)
    key_mask = s['key_mask'].at[:, prompt_len + i].set(True)
    next_tokens = run_ids[:, :, i].reshape(b * k)
    seen = s['seen']
    if seen is not None:
      seen = repetition.see(_gather(seen.reshape(b, k, v), run_origin).reshape(b * k, v),
                            next_tokens)
    logits, cache = decode(next_tokens, s['positions'], cache, prompt_len + i, key_mask)
    return dict(cache=cache, logits=logits, key_mask=key_mask, positions=s['positions'] + 1,
                run_ids=run_ids, run_scores=run_scores, fin_ids=fin_ids,
                fin_scores=fin_scores, fin=fin, improvable=improvable, seen=seen,
                matched=matched, i=i + 1, going=going)

  state = jax.lax.while_loop(lambda s: s['going'] & (s['i'] < n), step, state)
  return state['fin_ids'][:, 0], state['fin_scores'][:, 0]
