"""Batched greedy generation with a KV cache, static shapes under jit.

Prompts are left-padded so every row's next token lands in the same cache slot;
positions skip the padding, so a row sees exactly what it saw in training.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from radjax.models import llm as llm_lib


def left_pad(prompts: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p) > length:
      raise ValueError(f'prompt {i} has {len(p)} tokens, more than the {length} allowed')
    tokens[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  return tokens, mask


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def greedy_generate(model, params, prompt_tokens, prompt_mask, images, max_new_tokens: int,
                    stop_ids: tuple[int, ...]):
  """Returns generated ids [B, max_new_tokens]; after a stop token, rows emit stop ids."""
  cfg = model.cfg.llm
  b, p = prompt_tokens.shape
  cache = llm_lib.init_cache(cfg, b, p + max_new_tokens)
  key_mask = jnp.zeros((b, p + max_new_tokens), bool).at[:, :p].set(prompt_mask)
  positions = llm_lib.positions_from_mask(prompt_mask)
  logits, aux = model.apply({'params': params}, prompt_tokens, images, positions,
                            cache, 0, key_mask)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  stops = jnp.asarray(stop_ids, jnp.int32)

  def step(carry, i):
    cache, tok, pos, key_mask, done = carry
    key_mask = key_mask.at[:, p + i].set(True)
    logits, aux = model.apply({'params': params}, tok[:, None], pos[:, None], cache, p + i,
                              key_mask, method=model.decode_step)
    nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    done = done | jnp.isin(tok, stops)
    nxt = jnp.where(done, stops[0], nxt)
    return (aux['cache'], nxt, pos + 1, key_mask, done), tok

  init = (aux['cache'], first, positions[:, -1] + 1, key_mask, jnp.zeros((b,), bool))
  _, out = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
  return out.T
