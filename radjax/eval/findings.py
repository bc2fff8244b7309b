"""A small sentence-level finding extractor and finding-level P/R/F1.

Enough to score the demo's five synthetic findings; the full 14-observation
CheXpert-style labeler is a separate module.
"""
import re

import numpy as np

FINDING_PATTERNS = {
    'cardiomegaly': (r'cardiomegaly|(heart|cardiac)[^.;]{0,40}enlarg'
                     r'|enlarg[^.;]{0,30}(heart|cardiac)'),
    'pleural_effusion': r'effusion',
    'pneumothorax': r'pneumothora',
    'nodule': r'nodul|\bmass(es)?\b',
    'consolidation': r'consolidat|air ?space (disease|opacit)',
}
NEGATION = re.compile(r'\b(no|without|negative for|free of|not|resolved|resolution of|clear of)\b')
_COMPILED = {k: re.compile(v) for k, v in FINDING_PATTERNS.items()}


def extract_findings(text: str) -> set[str]:
  """Findings asserted in `text`: a keyword not preceded by a negation cue in its clause."""
  found = set()
  for clause in re.split(r'[.;\n]|\bbut\b|\bhowever\b', text.lower()):
    for name, pattern in _COMPILED.items():
      m = pattern.search(clause)
      if m and not NEGATION.search(clause[:m.start()]):
        found.add(name)
  return found


def finding_scores(predicted: list[set[str]], truth: list[set[str]],
                   findings=tuple(FINDING_PATTERNS)) -> dict[str, float]:
  """Per-finding and micro/macro precision, recall and F1, plus a constant baseline:
  the F1 of always predicting every finding (the best constant predictor for F1)."""
  pred = np.array([[f in p for f in findings] for p in predicted], bool).reshape(-1, len(findings))
  true = np.array([[f in t for f in findings] for t in truth], bool).reshape(-1, len(findings))
  tp = (pred & true).sum(0)
  fp = (pred & ~true).sum(0)
  fn = (~pred & true).sum(0)

  def prf(tp, fp, fn):
    p = tp / max(tp + fp, 1)
    r = tp / max(tp + fn, 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)

  out = {}
  f1s = []
  for i, f in enumerate(findings):
    p, r, f1 = prf(tp[i], fp[i], fn[i])
    out[f'{f}/precision'], out[f'{f}/recall'], out[f'{f}/f1'] = p, r, f1
    f1s.append(f1)
  p, r, f1 = prf(tp.sum(), fp.sum(), fn.sum())
  out.update({'micro_precision': p, 'micro_recall': r, 'micro_f1': f1,
              'macro_f1': float(np.mean(f1s))})
  pos = true.sum()
  out['baseline_all_positive_micro_f1'] = 2 * pos / (pos + true.size) if true.size else 0.0
  return {k: float(v) for k, v in out.items()}
