"""The keyword term file of a built dataset: `terms.txt`, one term a line.

RadFM weights the loss on answer tokens that spell medical entities (seeds_spec §4.2);
offline, the embedded datasets name theirs: the MeSH headings of the findings they can
draw, kept only when the heading really occurs in the dataset's report or answer text
(as a whole word, case-insensitive, plural allowed), so every term can match something.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

FILENAME = 'terms.txt'


def _pattern(term: str) -> re.Pattern:
  words = r'\s+'.join(re.escape(w) for w in term.split())
  return re.compile(rf'\b{words}(?:s|es)?\b', re.IGNORECASE)


class TermCounter:
  """Counts, over texts fed to it, which candidate terms occur."""

  def __init__(self, candidates: Iterable[str]):
    self.candidates = tuple(dict.fromkeys(candidates))
    self._patterns = [_pattern(t) for t in self.candidates]
    self.counts = dict.fromkeys(self.candidates, 0)

  def add(self, text: str) -> None:
    for term, pattern in zip(self.candidates, self._patterns):
      if pattern.search(text):
        self.counts[term] += 1

  def add_example(self, example: dict) -> None:
    report = example.get('report') or {}
    self.add(' '.join([report.get('findings', ''), report.get('impression', '')]
                      + [t['text'] for t in example.get('conversation') or []
                         if t.get('role') == 'assistant']))

  def occurring(self) -> list[str]:
    return [t for t in self.candidates if self.counts[t]]

  def file_text(self) -> str:
    return ''.join(t + '\n' for t in self.occurring())


def read_terms(path: str) -> list[str]:
  """The terms of a `terms.txt` (blank lines and '#' comments skipped)."""
  with open(path) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith('#')]
