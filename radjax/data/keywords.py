"""Keyword-weighted loss (RadFM): answer tokens of listed medical terms count `weight`
times, the others once; the loss is then sum(w * CE) / sum(w) (radjax/train/loss.py
normalises by the summed mask). RadFM computes these weights from scispaCy/UMLS entities
but its released forward returns the plain loss; here they are applied.

The term list is a text file, one term per line ('#' starts a comment), matched
case-insensitively as whole words (plural allowed); a longer term wins over a shorter one
inside it. `python -m data_prep.terms` builds such a file offline from a vocabulary (e.g.
MeSH descriptor names) and a built dataset; the embedded datasets ship one (`terms.txt`).
"""
import dataclasses
import os
import re

import numpy as np


def read_terms(path: str) -> tuple[str, ...]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.data.keyword_terms: {path!r} is not a file')
  terms = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      term = line.split('#', 1)[0].strip()
      if term:
        terms.append(term)
  if not terms:
    raise ValueError(f'config.data.keyword_terms: {path!r} lists no terms')
  return tuple(dict.fromkeys(terms))


def terms_pattern(terms) -> re.Pattern:
  """Any of `terms` as whole words, case-insensitive, any whitespace between a term's
  words, a plural 's'/'es' allowed; the longest term wins where terms overlap."""
  def one(term):
    return r'\s+'.join(re.escape(w) for w in term.split()) + '(?:s|es)?'
  alternatives = sorted(terms, key=len, reverse=True)
  return re.compile(r'(?<!\w)(?:' + '|'.join(one(t) for t in alternatives) + r')(?!\w)',
                    re.IGNORECASE)


@dataclasses.dataclass
class KeywordWeights:
  terms: tuple[str, ...]
  weight: float = 3.0

  def __post_init__(self):
    if not self.weight > 0:
      raise ValueError(f'config.data.keyword_weight={self.weight} must be > 0')
    self.pattern = terms_pattern(self.terms)

  def spans(self, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in self.pattern.finditer(text)]

  def token_weights(self, tokenizer, text: str) -> tuple[list[int], np.ndarray]:
    """(ids, weights) of `text`: the ids `tokenizer.encode` gives, weight `weight` for
    tokens overlapping a term, 1 elsewhere. Needs a fast tokenizer (character offsets)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc['input_ids'], enc['offset_mapping']
    w = np.ones(len(ids), np.float32)
    for start, end in self.spans(text):
      for i, (a, b) in enumerate(offsets):
        if a < end and b > start:
          w[i] = self.weight
    return ids, w


def from_config(data_config) -> KeywordWeights | None:
  """config.data.keyword_terms (comma-separated files, their terms pooled; '' = off) and
  config.data.keyword_weight."""
  paths = [p for p in data_config.get('keyword_terms', '').split(',') if p]
  if not paths:
    return None
  terms = tuple(dict.fromkeys(t for p in paths for t in read_terms(p)))
  return KeywordWeights(terms, float(data_config.get('keyword_weight', 3.0)))
