"""Batched generation with a KV cache and static shapes under jit: greedy, sampling
(temperature, top-k, top-p) and beam search, with HF's repetition penalty, for the VLM
and for a bare Decoder.

Prompts are left-padded so every row's next token lands in the same cache slot;
positions skip the padding, so a row sees exactly what it saw in training. Greedy and
beam search reproduce HF transformers' `generate` token for token (tests/test_generate.py).
"""
import dataclasses
import functools
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from radjax.core import config_checks
from radjax.data import pixels
from radjax.eval.decoding import beam_search as beam_lib
from radjax.eval.decoding import repetition, sampling
from radjax.eval.decoding import stop_strings as stop_strings_lib
from radjax.models import llm as llm_lib

DECODINGS = ('greedy', 'sample', 'beam')


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Hashable, so it is a static argument of the jitted `generate` (temperature, top_p
and repetition_penalty only as whether they apply: their values are arguments).

  decoding: 'greedy' | 'sample' | 'beam'; 'sample' with temperature 0 and 'beam' with one
  beam are greedy, as in HF.
  top_k 0 and top_p 1.0 switch those filters off (HF defaults top_k to 50; we do not).
  repetition_penalty: HF's, on the ids of the prompt and of the tokens generated so far,
  before everything else (radjax/eval/decoding/repetition.py); 1.0 is off.
  length_penalty / early_stopping: as HF (early_stopping True | False | 'never').
  pad_id: what finished rows emit; None keeps the old behaviour of repeating stop_ids[0].
  stop_strings end a row (a beam: a hypothesis, as EOS does) inside the loop when
  `generate` is given their table (radjax/eval/decoding/stop_strings.py).
  suppress_ids: ids never generated (their logits are -inf, as HF's `suppress_tokens`):
  image placeholders and delimiters, vocabulary padding past the tokenizer.
  image_span: (first_code, end_code, length, close_id), or () for none: the first
  `length` new tokens are image codes (ids in [first_code, end_code)), the next is
  close_id (LLM-CXR: a prompt ending on <image_begin> gets exactly 256 VQ-GAN codes and
  <image_end>, no retry loop); afterwards decoding is free.
  """
  max_new_tokens: int = 96
  decoding: str = 'greedy'
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  num_beams: int = 1
  length_penalty: float = 1.0
  early_stopping: Union[bool, str] = False
  stop_ids: tuple[int, ...] = ()
  stop_strings: tuple[str, ...] = ()
  pad_id: Optional[int] = None
  suppress_ids: tuple[int, ...] = ()
  image_span: tuple[int, ...] = ()

  def __post_init__(self):
    if self.decoding not in DECODINGS:
      raise ValueError(f'decoding: {self.decoding!r} not in {DECODINGS}')
    if self.max_new_tokens < 1 or self.num_beams < 1:
      raise ValueError('max_new_tokens and num_beams must be >= 1')
    if not 0 <= self.temperature < float('inf') or self.top_k < 0 or not 0 < self.top_p <= 1:
      raise ValueError(f'need a finite temperature >= 0, top_k >= 0, 0 < top_p <= 1; got '
                       f'{self.temperature}, {self.top_k}, {self.top_p}')
    repetition.validate(self.repetition_penalty)
    if self.early_stopping not in (True, False, 'never'):
      raise ValueError(f"early_stopping: {self.early_stopping!r} not in (True, False, 'never')")
    if self.image_span:
      first, end, length, _ = self.image_span
      if not 0 <= first < end or length < 1:
        raise ValueError(f'image_span {self.image_span}: need 0 <= first_code < end_code and '
                         'length >= 1')
      if self.max_new_tokens < length + 1:
        raise ValueError(f'image_span of {length} codes needs max_new_tokens >= {length + 1}, '
                         f'got {self.max_new_tokens}')

  @property
  def strategy(self) -> str:
    if self.decoding == 'sample' and self.temperature == 0:
      return 'greedy'
    if self.decoding == 'beam' and self.num_beams == 1:
      # HF decodes one beam greedily; a beam of one would file a hypothesis at a stop token
      # and go on with the runner-up (early_stopping='never' then keeps a longer one).
      return 'greedy'
    return self.decoding

  @property
  def fill_id(self) -> int:
    if self.pad_id is not None:
      return self.pad_id
    return self.stop_ids[0] if self.stop_ids else 0


def config_from_eval(eval_cfg, stop_ids: tuple[int, ...], pad_id: Optional[int],
                     suppress_ids: tuple[int, ...] = ()) -> GenerationConfig:
  """GenerationConfig from the `config.eval` section."""
  penalty = float(eval_cfg.get('repetition_penalty', 1.0))
  repetition.validate(penalty, 'config.eval.repetition_penalty')
  return GenerationConfig(
      max_new_tokens=int(eval_cfg.max_new_tokens), decoding=eval_cfg.get('decoding', 'greedy'),
      temperature=float(eval_cfg.get('temperature', 1.0)), top_k=int(eval_cfg.get('top_k', 0)),
      top_p=float(eval_cfg.get('top_p', 1.0)), repetition_penalty=penalty,
      num_beams=int(eval_cfg.get('num_beams', 1)),
      length_penalty=float(eval_cfg.get('length_penalty', 1.0)),
      early_stopping=config_checks.early_stopping(eval_cfg.get('early_stopping', False)),
      stop_ids=tuple(int(i) for i in stop_ids),
      stop_strings=tuple(eval_cfg.get('stop_strings', ())), pad_id=pad_id,
      suppress_ids=tuple(sorted(int(i) for i in suppress_ids)))


def left_pad(prompts: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p) > length:
      raise ValueError(f'prompt {i} has {len(p)} tokens, more than the {length} allowed')
    if not p:  # nothing to continue from: whitespace with a tokenizer that adds no BOS
      raise ValueError(f'prompt {i} encodes to no tokens')
    tokens[i, length - len(p):] = p
    mask[i, length - len(p):] = True
  return tokens, mask


def _llm(model) -> tuple:
  """(LLMConfig, Runtime) of a VLM's decoder or of a bare Decoder."""
  if isinstance(model, llm_lib.Decoder):
    return model.cfg, model.rt
  return model.cfg.llm, model.rt.llm


def _prefill(model, params, prompt_tokens, prompt_mask, images, max_new_tokens: int):
  """Runs the prompt into a fresh cache. Images go through the VLM's `__call__`; a bare
  Decoder (images None) takes the prompt through `decode_step`."""
  b, p = prompt_tokens.shape
  cfg, rt = _llm(model)
  cache = llm_lib.init_cache(cfg, b, p + max_new_tokens, rt.dtype)
  key_mask = jnp.zeros((b, p + max_new_tokens), bool).at[:, :p].set(prompt_mask)
  positions = llm_lib.positions_from_mask(prompt_mask)
  if images is None:
    logits, aux = model.apply({'params': params}, prompt_tokens, positions, cache, 0, key_mask,
                              method=model.decode_step)
  else:
    # 8-bit pixels and their tables (radjax/data/pixels.py) -> floats, first in the jit
    kw = pixels.as_floats(images if isinstance(images, dict) else {'images': images})
    logits, aux = model.apply({'params': params}, prompt_tokens, positions=positions,
                              cache=cache, cache_index=0, key_mask=key_mask, **kw)
  return logits[:, -1], aux['cache'], key_mask, positions[:, -1] + 1


def _decoder(model, params) -> Callable:
  def decode(tokens, positions, cache, index, key_mask):
    logits, aux = model.apply({'params': params}, tokens[:, None], positions[:, None], cache,
                              index, key_mask, method=model.decode_step)
    return logits[:, -1], aux['cache']
  return decode


def _processor(cfg: GenerationConfig, vocab_size: int) -> Optional[Callable]:
  """process(x [R, V], k) -> x with the ids step k (0: the first new token) may not emit
  at -inf: `suppress_ids` every step; with `image_span`, only image codes for the first
  `length` steps, then only the closing id. None when nothing is masked. Greedy and
  sampling apply it to the logits, beam search to the log-probs, as HF applies its
  logits processors (so HF's beam scores are not renormalised over what is left)."""
  if not cfg.suppress_ids and not cfg.image_span:
    return None
  ids = jnp.arange(vocab_size)
  banned = jnp.zeros((vocab_size,), bool)
  if cfg.suppress_ids:
    banned = banned.at[jnp.asarray(cfg.suppress_ids)].set(True)

  def process(x, k):
    allowed = ~banned
    if cfg.image_span:
      first, end, length, close = cfg.image_span
      is_code, is_close = (ids >= first) & (ids < end), ids == close
      allowed = allowed & jnp.where(k < length, is_code, jnp.where(k == length, is_close, True))
    return jnp.where(allowed, x, -jnp.inf)

  return process


def _token_loop(decode, logits, cache, key_mask, positions, p: int, cfg: GenerationConfig, rng,
                fill, values: dict, process: Optional[Callable] = None, seen=None,
                stop_table=None):
  """Greedy or sampling; finished rows emit `fill`. Scores: summed log-probs
  (of the unwarped distribution) of each row's tokens up to its stop token.
  seen [B, V]: the prompt ids the repetition penalty starts from (None: no penalty).
  stop_table: stop strings' matcher (stop_strings.table), or None."""
  stops = jnp.asarray(cfg.stop_ids, jnp.int32)
  greedy = cfg.strategy == 'greedy'

  def step(carry, i):
    cache, logits, key_mask, positions, done, score, seen, matched = carry
    if seen is not None:  # first, on the raw logits, as HF orders its processors
      logits = repetition.penalize(logits, seen, values['repetition_penalty'])
    if process is not None:
      logits = process(logits, i)
    if greedy:
      tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    else:
      tok = sampling.sample_rows(rng, i, logits, cfg.temperature, cfg.top_k, cfg.top_p,
                                 values)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), tok[:, None],
                               axis=-1)[:, 0]
    score = score + jnp.where(done, 0.0, logp)
    tok = jnp.where(done, fill, tok)
    if seen is not None:
      seen = repetition.see(seen, tok)
    done = done | jnp.isin(tok, stops)
    if stop_table is not None:  # a finished row's state no longer matters
      matched = stop_table[matched, tok]
      done = done | (matched == stop_strings_lib.MATCHED)
    key_mask = key_mask.at[:, p + i].set(True)
    logits, cache = decode(tok, positions, cache, p + i, key_mask)
    return (cache, logits, key_mask, positions + 1, done, score, seen, matched), tok

  b, n = logits.shape[0], cfg.max_new_tokens
  init = (cache, logits, key_mask, positions, jnp.zeros((b,), bool), jnp.zeros((b,), jnp.float32),
          seen, jnp.full((b,), stop_strings_lib.START, jnp.int32))

  def body(state):
    i, carry, out = state
    carry, tok = step(carry, i)
    return i + 1, carry, out.at[i].set(tok)

  def running(state):  # ends once every row has stopped: the rest would all be `fill`
    i, carry, _ = state
    return (i < n) & ~jnp.all(carry[4])

  out = jnp.full((n, b), fill, jnp.int32)
  _, (*_, score, _, _), out = jax.lax.while_loop(running, body, (jnp.int32(0), init, out))
  return out.T, score


def generate(model, params, prompt_tokens, prompt_mask, images, gen_cfg: GenerationConfig,
             rng=None, stop_table=None):
  """Generates `gen_cfg.max_new_tokens` ids per left-padded prompt (jitted).

  prompt_tokens / prompt_mask [B, P]; images [B, M, H, W, C] for a VLM (or a dict of the
  VLM's image arguments: images [B, M, H, W, D, C] and depth_mask [B, M, D]; 8-bit images
  with their pixel_table, or compact volume slots, radjax/data/pixels.py), None for a
  bare Decoder; rng: needed when sampling, a PRNG key per row [B] (row r's step i draws
  with fold_in(rng[r], i), whatever else is in the batch) or one key (row r's is
  fold_in(rng, r)).
  Returns (ids [B, max_new_tokens], scores [B]): for beam search (two or more beams) the
  best finished hypothesis and its HF `sequences_scores`; otherwise summed token log-probs.
  stop_table: the stop strings' table (stop_strings.table: the chat format's and
  gen_cfg.stop_strings) for rows to stop at them, as HF's StopStringCriteria (the token
  completing one is kept; in beam search it finishes a hypothesis, as a stop id does);
  without it they are left to `apply_stop_strings` / the text's cut.
  """
  if gen_cfg.strategy == 'sample' and rng is None:
    raise ValueError("decoding='sample' needs an rng key")
  # Values a strategy ignores go in too: only the static config decides what applies.
  values = sampling.knobs(gen_cfg.temperature, gen_cfg.top_p, gen_cfg.repetition_penalty)
  keys = sampling.row_keys(rng, prompt_tokens.shape[0]) if gen_cfg.strategy == 'sample' else None
  return _generate(model, params, prompt_tokens, prompt_mask, images, _canonical(gen_cfg), keys,
                   jnp.int32(gen_cfg.fill_id), values, stop_table)


def _canonical(cfg: GenerationConfig) -> GenerationConfig:
  """Resets the knobs the strategy ignores (and the fill id, an argument), so equivalent
  configs share one compilation; temperature, top-p and the repetition penalty keep only
  whether they apply (their values are arguments: a web demo's slider compiles nothing)."""
  kw = dict(decoding=cfg.strategy, stop_strings=(),
            temperature=1.0 if cfg.temperature == 1.0 else 2.0,
            top_p=1.0 if cfg.top_p == 1.0 else 0.5,
            repetition_penalty=1.0 if cfg.repetition_penalty == 1.0 else 2.0)
  if cfg.strategy != 'sample':
    kw.update(temperature=1.0, top_k=0, top_p=1.0)
  if cfg.strategy != 'beam':
    kw.update(num_beams=1, length_penalty=1.0, early_stopping=False)
  return dataclasses.replace(cfg, pad_id=None, **kw)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _generate(model, params, prompt_tokens, prompt_mask, images, cfg: GenerationConfig, rng,
              fill, values, stop_table):
  p = prompt_tokens.shape[1]
  logits, cache, key_mask, positions = _prefill(model, params, prompt_tokens, prompt_mask,
                                                images, cfg.max_new_tokens)
  decode = _decoder(model, params)
  process = _processor(cfg, logits.shape[-1])
  seen = None  # at 1.0 the program is the one without a penalty
  if cfg.repetition_penalty != 1.0:
    seen = repetition.seen_in_prompt(prompt_tokens, prompt_mask, logits.shape[-1])
  if cfg.strategy == 'beam':
    return beam_lib.beam_search(decode, logits, cache, key_mask, positions, p,
                                cfg.max_new_tokens, cfg.num_beams, cfg.length_penalty,
                                cfg.early_stopping, cfg.stop_ids, fill, process, seen,
                                values['repetition_penalty'], stop_table)
  return _token_loop(decode, logits, cache, key_mask, positions, p, cfg, rng, fill, values,
                     process, seen, stop_table)


def greedy_generate(model, params, prompt_tokens, prompt_mask, images, max_new_tokens: int,
                    stop_ids: tuple[int, ...]):
  """Returns generated ids [B, max_new_tokens]; after a stop token, rows emit stop_ids[0]."""
  cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids))
  return generate(model, params, prompt_tokens, prompt_mask, images, cfg)[0]


def stop_string_length(ids, decode: Callable[[list[int]], str],
                       stop_strings: tuple[str, ...]) -> Optional[int]:
  """Tokens HF's StopStringCriteria would have kept: the shortest prefix whose text
  contains a stop string (its last token completes it), or None if none occurs."""
  ids = [int(t) for t in ids]
  if not stop_strings or not any(s in decode(ids) for s in stop_strings):
    return None
  for t in range(1, len(ids) + 1):
    text = decode(ids[:t])
    if any(s in text for s in stop_strings):
      return t
  return None


def apply_stop_strings(ids, decode: Callable[[list[int]], str], stop_strings: tuple[str, ...],
                       pad_id: int) -> np.ndarray:
  """Post-hoc stop strings on generated ids [B, N]: each row keeps the tokens up to the
  one that completes a stop string and is padded after, which is what HF's greedy and
  sampling output holds (earlier tokens never depend on later ones). HF also matches
  across the prompt/answer boundary; here only the generated tokens are searched. Beam
  search ranks hypotheses differently when they stop early, so there it is only a
  truncation: `generate`'s stop_table stops them inside the search."""
  out = np.array(ids, copy=True)
  for row in out:
    t = stop_string_length(row, decode, stop_strings)
    if t is not None:
      row[t:] = pad_id
  return out


def cut_at_stop_strings(text: str, stop_strings: tuple[str, ...]) -> str:
  """Text before the first occurrence of any stop string (which is dropped)."""
  cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
  return text[:cut]
