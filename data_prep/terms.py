"""Keyword term files (`terms.txt`, one term a line) for RadFM's keyword-weighted loss
(radjax/data/keywords.py reads them and matches the same way as here).

A term is kept only when it really occurs in the dataset's report or answer text (whole
word, case-insensitive, plural allowed), so every term can match something. The embedded
datasets write theirs from the MeSH headings of the findings they draw; for a real
dataset, build one offline from any vocabulary file:

    python -m data_prep.terms --vocabulary mesh_headings.txt --data_dir BUILT_DIR \\
        [--split train] --out BUILT_DIR/terms.txt

The vocabulary is a text file with one heading per line, or MeSH's descriptor XML
(`desc<year>.xml`: every DescriptorName).
"""

from __future__ import annotations

import argparse
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from radjax.data import keywords

FILENAME = 'terms.txt'
read_terms = keywords.read_terms


class TermCounter:
  """Counts, over texts fed to it, which candidate terms occur."""

  def __init__(self, candidates: Iterable[str]):
    self.candidates = tuple(dict.fromkeys(candidates))
    self._patterns = [keywords.terms_pattern([t]) for t in self.candidates]
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


def read_vocabulary(path: str) -> list[str]:
  """Headings of a vocabulary file: MeSH descriptor XML, or one heading per line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--vocabulary: {path!r} is not a file')
  if path.endswith('.xml'):
    try:
      root = ET.parse(path).getroot()
    except ET.ParseError as e:
      raise ValueError(f'{path}: not readable XML ({e})') from e
    names = [n.findtext('String', '').strip() for n in root.iter('DescriptorName')]
  else:
    with open(path, encoding='utf-8') as f:
      names = [line.split('#', 1)[0].strip() for line in f]
  names = [n for n in names if n]
  if not names:
    raise ValueError(f'{path}: no headings found')
  return names


def terms_of_dataset(vocabulary: list[str], data_dir: str, split: str = 'train') -> list[str]:
  """The vocabulary's terms that occur in a built dataset's split."""
  from radjax.data import schema, source
  counter = TermCounter(vocabulary)
  records = source.open_split(data_dir, split)
  for i in range(len(records)):
    counter.add_example(schema.decode(records[i]))
  return counter.occurring()


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--vocabulary', required=True)
  p.add_argument('--data_dir', required=True, help='a built dataset')
  p.add_argument('--split', default='train')
  p.add_argument('--out', required=True)
  args = p.parse_args(argv)
  try:
    found = terms_of_dataset(read_vocabulary(args.vocabulary), args.data_dir, args.split)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write(''.join(t + '\n' for t in found))
  print(f'{args.out}: {len(found)} terms')
  return 0


if __name__ == '__main__':
  sys.exit(main())
