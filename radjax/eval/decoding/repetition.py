"""HF's repetition penalty (RepetitionPenaltyLogitsProcessor) with static shapes: each row
carries a [V] mask of the ids in its sequence so far, prompt and generated tokens alike,
and the scores of those ids are multiplied by the penalty where negative, divided by it
otherwise.

Prompt padding never counts, wherever it sits (HF v5 skips a prompt's leading padding).
Image placeholder ids count like any prompt id, as HF counts a LLaVA's image tokens in
its input_ids; a VLM's generations suppress them anyway, so it changes no output.
"""
import jax.numpy as jnp


def validate(penalty: float, key: str = 'repetition_penalty') -> None:
  if not penalty > 0:  # NaN included
    raise ValueError(f'{key}: need > 0 (1.0: off, > 1 penalises repeats), got {penalty}')


def seen_in_prompt(tokens, mask, vocab_size: int):
  """[B, V] bool: the ids at the prompt's real positions (mask True). Ids outside the
  head's vocabulary are dropped, as HF drops them."""
  ids = jnp.where(mask, tokens, vocab_size)
  rows = jnp.arange(tokens.shape[0])[:, None]
  return jnp.zeros((tokens.shape[0], vocab_size), bool).at[rows, ids].set(True, mode='drop')


def see(seen, tokens):
  """seen [R, V] with each row's new token (tokens [R]) added."""
  return seen.at[jnp.arange(seen.shape[0]), tokens].set(True, mode='drop')


def penalize(scores, seen, penalty: float):
  """scores [R, V] (f32) with HF's penalty on the seen ids."""
  scores = scores.astype(jnp.float32)
  return jnp.where(seen, jnp.where(scores < 0, scores * penalty, scores / penalty), scores)
