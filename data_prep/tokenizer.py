"""A small byte-level BPE tokenizer trained on the OpenI report texts.

The demo model cannot download a pretrained tokenizer, so it trains its own on
the real report text it will generate. Byte-level BPE never needs <unk>, keeps
case (radiology abbreviations matter) and round-trips any string exactly.

Special tokens have fixed ids 0-8 so configs and templates can rely on them.
Encoding adds no special tokens by itself: the task templates in radjax/data
place <s>, <image>, turn markers and </s> explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from radjax.data import tokens

# ids 0-8 in radjax's order (radjax/data/tokens.py owns the list).
SPECIAL_TOKENS = {t: i for i, t in enumerate(tokens.SPECIAL_TOKENS)}
UNK = tokens.SPECIALS['unk']
DEFAULT_VOCAB_SIZE = 2048


def openi_texts() -> list[str]:
  """Findings and impression of every OpenI report, in id order."""
  from data_prep import openi_reports

  texts = []
  for report in openi_reports.load_reports():
    texts += [t for t in (report['findings'], report['impression']) if t]
  return texts


def train_tokenizer(
  vocab_size: int = DEFAULT_VOCAB_SIZE, texts: Iterable[str] | None = None
) -> Tokenizer:
  """Trains byte-level BPE; same texts and vocab_size give the same tokenizer."""
  specials = sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.get)
  tokenizer = Tokenizer(models.BPE(unk_token=UNK))
  # No normalizer: keep case and punctuation exactly as written.
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=specials,  # assigned ids 0..8 in this order
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(list(texts if texts is not None else openi_texts()), trainer)
  for token, idx in SPECIAL_TOKENS.items():
    if tokenizer.token_to_id(token) != idx:
      raise AssertionError(f'special token {token} got id {tokenizer.token_to_id(token)}')
  return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tokenizer.save(path)
