"""Corpus-level captioning metrics for generated reports.

BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap, one reference per
report, on lower-cased text with every punctuation mark turned into a space and no PTB
tokenizer (pycocoevalcap's scorers called directly, as R2Gen does; R2Gen's own cleaner
differs: it keeps sentence ends as "." tokens and deletes other marks). METEOR runs the
jar pycocoevalcap ships with Java; nothing is downloaded (SPICE, which would, is not used).
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r'[^\w\s]|_')


def normalize(text: str) -> str:
  """Lower-case, punctuation to spaces, whitespace collapsed."""
  return ' '.join(_PUNCT.sub(' ', (text or '').lower()).split())


def nlg_scores(generated: list[str], references: list[str], meteor: bool = True) -> dict:
  """{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "num_empty_generations"}: the
  names papers report, so the output reads like their tables."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  if len(generated) != len(references):
    raise ValueError(f'{len(generated)} generations vs {len(references)} references')
  res = {i: [normalize(g)] for i, g in enumerate(generated)}
  gts = {i: [normalize(r)] for i, r in enumerate(references)}
  empty = sum(not r[0] for r in res.values())
  out: dict[str, float] = {'num_reports': float(len(res)), 'num_empty_generations': float(empty)}
  if not res:
    return out
  bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  out.update({f'BLEU-{n + 1}': float(b) for n, b in enumerate(bleu)})
  out['ROUGE-L'] = float(Rouge().compute_score(gts, res)[0])
  out['CIDEr'] = float(Cider().compute_score(gts, res)[0])
  if meteor:
    from pycocoevalcap.meteor.meteor import Meteor
    scorer = Meteor()  # its __del__ ends the Java process
    out['METEOR'] = float(scorer.compute_score(gts, res)[0])
    del scorer
  return out
