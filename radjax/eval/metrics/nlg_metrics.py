"""Corpus-level captioning metrics for generated reports.

BLEU-1..4, METEOR, ROUGE-L and CIDEr from pycocoevalcap, one reference per
report, on lower-cased text with every punctuation mark turned into a space and no PTB
tokenizer (pycocoevalcap's scorers called directly, as R2Gen does; R2Gen's own cleaner
differs: it keeps sentence ends as "." tokens and deletes other marks). METEOR runs the
jar pycocoevalcap ships with Java; nothing is downloaded (SPICE, which would, is not used).
"""

from __future__ import annotations

import re

from radjax.core import config_checks

_PUNCT = re.compile(r'[^\w\s]|_')


# R2Gen's report cleaner (R2Gen modules/tokenizers.py, MIMIC-CXR): sentence ends kept as
# " . " tokens, these marks deleted (its class has the range ':' to '[', so '-' stays).
_R2GEN_MARKS = re.compile(r'[.,?;*!%^&_+():;<=>@\[\]{}]')
_R2GEN_NUMBERING = (('1. ', ''), ('. 2. ', '. '), ('. 3. ', '. '), ('. 4. ', '. '),
                    ('. 5. ', '. '), (' 2. ', '. '), (' 3. ', '. '), (' 4. ', '. '),
                    (' 5. ', '. '))
TEXT_NORMS = config_checks.CHOICES['eval.text_norm']


def _r2gen(text: str) -> str:
  text = re.sub(r'_+', '_', (text or '').replace('\n', ' '))
  text = re.sub(r'\.{2,}', '.', re.sub(r' {2,}', ' ', text))
  for old, new in _R2GEN_NUMBERING:
    text = text.replace(old, new)
  sentences = text.strip().lower().split('. ')
  cleaned = [_R2GEN_MARKS.sub('', re.sub(r'["/\\\']', '', s).strip()) for s in sentences]
  return ' '.join((' . '.join(cleaned) + ' .').split())  # empty sentences stay, as there


def normalize(text: str, style: str = 'radjax') -> str:
  """'radjax': lower-case, punctuation to spaces, whitespace collapsed; 'r2gen': R2Gen's
  cleaner, so scores compare with the papers that follow it."""
  if style == 'r2gen':
    return _r2gen(text) if (text or '').strip() else ''
  if style != 'radjax':
    raise ValueError(f'config.eval.text_norm: {style!r} is not one of {TEXT_NORMS}')
  return ' '.join(_PUNCT.sub(' ', (text or '').lower()).split())


def nlg_scores(generated: list[str], references: list[str], meteor: bool = True,
               text_norm: str = 'radjax') -> dict:
  """{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "num_empty_generations"}: the
  names papers report, so the output reads like their tables."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  if len(generated) != len(references):
    raise ValueError(f'{len(generated)} generations vs {len(references)} references')
  res = {i: [normalize(g, text_norm)] for i, g in enumerate(generated)}
  gts = {i: [normalize(r, text_norm)] for i, r in enumerate(references)}
  empty = sum(not normalize(g) for g in generated)
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
