"""Stop strings checked inside the token loop: a row stops at the token that completes one,
as HF's StopStringCriteria stops it, so XrayGPT's reports, closed by '###' rather than EOS,
end the loop near their ~60 tokens instead of running all 300 of config.eval.max_new_tokens.

Each row carries the state of a matcher over the stop strings' characters (the longest
end of its text so far that begins a stop string). `table` [states, vocab] gives the
state after each token; it is built once on the host from each token's text, and the
loop only gathers from it. A token's text is what it adds inside a text (decode([a, t])
less decode([a])), so sentencepiece's word-start spaces and byte tokens read as they do
in the decoded answer; the answer's first token uses its text alone (a leading space
that decoding drops). A token whose text cannot be known alone (one byte of a multi-byte
character) resets the matcher: a stop string across it is missed here (the text is still
cut afterwards, as before), never one that is not there.
"""
import re

import numpy as np

# Rows of the table besides the matcher's states: MATCHED stays matched; START is a row's
# state before its first token; DIRTY: inside a run of byte tokens that may not decode.
MATCHED, START, DIRTY = 0, 1, 2
_STATES = 3  # the matcher's states follow
_BYTE_PIECE = re.compile('<0x[0-9A-Fa-f]{2}>')


class _Matcher:
  """States: the proper prefixes of the stop strings ('' first)."""

  def __init__(self, stop_strings: tuple[str, ...]):
    self.stops = tuple(s for s in stop_strings if s)
    prefixes = {''} | {s[:i] for s in self.stops for i in range(1, len(s))}
    self.states = sorted(prefixes, key=lambda p: (len(p), p))
    self.index = {p: i for i, p in enumerate(self.states)}
    self.alphabet = set(''.join(self.stops))
    self._steps = {}

  def step(self, state: int, char: str) -> int | None:
    """The state after `char`, or None when it completes a stop string."""
    if (state, char) not in self._steps:
      text = self.states[state] + char
      if any(text.endswith(s) for s in self.stops):
        self._steps[state, char] = None
      else:  # the longest end of `text` that a stop string begins with ('' at least)
        self._steps[state, char] = next(self.index[text[i:]] for i in range(len(text) + 1)
                                        if text[i:] in self.index)
    return self._steps[state, char]

  def after(self, state: int, text: str) -> int | None:
    for c in text:
      state = self.step(state, c)
      if state is None:
        return None
    return state


def _texts(tokenizer, n: int, anchor: int | None) -> list[str | None]:
  """Each id's text (after `anchor`, or alone when None); None where it does not decode to
  whole characters."""
  kw = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)
  if anchor is None:
    texts = tokenizer.batch_decode([[t] for t in range(n)], **kw)
  else:
    head = tokenizer.decode([anchor], **kw)
    pairs = tokenizer.batch_decode([[anchor, t] for t in range(n)], **kw)
    texts = [p[len(head):] if p.startswith(head) else None for p in pairs]
  return [None if t is None or '\ufffd' in t else t for t in texts]


def _anchor(tokenizer) -> int:
  """A plain word's token, which decodes the same before any other token."""
  ids = tokenizer.encode('a', add_special_tokens=False)
  if not ids:
    raise ValueError("the tokenizer encodes 'a' to no tokens: no stop-string table")
  return ids[-1]


def _specials(tokenizer, n: int, alone: list) -> list[int]:
  """The ids that decoding skips (their text is gone with skip_special_tokens)."""
  empty = [t for t, text in enumerate(alone) if text == '']
  kept = tokenizer.batch_decode([[t] for t in empty], skip_special_tokens=False)
  return [t for t, text in zip(empty, kept) if text]


def _fallback_bytes(tokenizer, n: int) -> np.ndarray:
  """Per id: -1, or the byte a sentencepiece byte-fallback token ('<0x0A>') stands for."""
  out = np.full((n,), -1, np.int32)
  for t, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(n)))):
    if isinstance(piece, str) and _BYTE_PIECE.fullmatch(piece):
      out[t] = int(piece[3:5], 16)
  return out


def table(tokenizer, stop_strings: tuple[str, ...], vocab_size: int) -> np.ndarray | None:
  """int32 [3 + states, vocab_size]: row r, column t -> the row after token t; row MATCHED
  once a stop string is complete. None without stop strings. Ids past the tokenizer (the
  model's vocabulary padding, never generated) reset the matcher.

  Byte-fallback tokens: a run of them that is not valid UTF-8 decodes to one U+FFFD per
  token, its ASCII bytes too (tokenizers' ByteFallback). Row DIRTY marks a run holding a
  byte >= 0x80: its ASCII bytes are not matched until another token ends the run."""
  m = _Matcher(tuple(stop_strings))
  if not m.stops:
    return None
  n = min(len(tokenizer), vocab_size)
  empty = _STATES  # the matcher's empty state
  out = np.full((_STATES + len(m.states), vocab_size), empty, np.int32)
  out[MATCHED] = MATCHED

  def fill(row: int, state: int, texts: list) -> None:
    for t, text in enumerate(texts):
      if text is not None and (not text or m.alphabet & set(text)):
        after = m.after(state, text)
        out[row, t] = MATCHED if after is None else _STATES + after

  alone, texts = _texts(tokenizer, n, None), _texts(tokenizer, n, _anchor(tokenizer))
  fill(START, 0, alone)  # a row's first token
  fill(DIRTY, 0, texts)  # a token that is no byte ends the run
  for state in range(len(m.states)):
    fill(_STATES + state, state, texts)
  # Decoding drops specials: the answer has still to begin, a byte run goes on past them.
  specials = _specials(tokenizer, n, alone)
  out[START, specials] = START
  out[DIRTY, specials] = DIRTY
  byte = _fallback_bytes(tokenizer, n)
  out[:, :n][:, byte >= 0x80] = DIRTY
  out[DIRTY, :n][(byte >= 0) & (byte < 0x80)] = DIRTY
  out[MATCHED] = MATCHED
  return out
