"""Clinical-efficacy (CE) metrics: labeler agreement between generated and reference reports.

Both sides are labeled with the same rule-based labeler (radjax/eval/metrics/labeler.py);
an observation is positive when its label is 1, or -1 with uncertain_as_positive
(the default, as in most report-generation CE numbers: a hedged finding still
commits the report to it). 0 and None (not mentioned) are negative.

Scores are over the 14 CheXpert observations (No Finding included) and over the
5 common ones. Micro pools every (report, observation) decision; macro averages
per-observation scores, with an observation lacking any positive on both sides
scoring 0 (sklearn's zero_division=0).
"""

from __future__ import annotations

import numpy as np

from radjax.data.schema import CHEXPERT_OBSERVATIONS

COMMON_5 = ('Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion')
GROUPS = {'14': CHEXPERT_OBSERVATIONS, '5': COMMON_5}


def _positive(labels: list[dict], observations, uncertain_as_positive: bool) -> np.ndarray:
  wanted = (1, -1) if uncertain_as_positive else (1,)
  return np.array([[row.get(obs) in wanted for obs in observations] for row in labels],
                  dtype=bool).reshape(len(labels), len(observations))


def prf(tp, fp, fn):
  """Precision, recall, F1 (elementwise; 0 where undefined) from counts."""
  tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))
  p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
  r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)
  f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
  return p, r, f1


def clinical_scores(generated_labels: list[dict], reference_labels: list[dict],
                    uncertain_as_positive: bool = True) -> dict[str, float]:
  """Flat CE metrics: clinical_{precision,recall,f1}_{micro,macro}_{14,5}.

  Each argument is a list (one per report, same order) of {observation: label}
  dicts as returned by label_report; missing keys count as not mentioned.
  """
  if len(generated_labels) != len(reference_labels):
    raise ValueError(f'{len(generated_labels)} generated vs {len(reference_labels)} references')
  out: dict[str, float] = {'clinical_num_reports': float(len(reference_labels))}
  for suffix, observations in GROUPS.items():
    pred = _positive(generated_labels, observations, uncertain_as_positive)
    true = _positive(reference_labels, observations, uncertain_as_positive)
    tp, fp, fn = (pred & true).sum(0), (pred & ~true).sum(0), (~pred & true).sum(0)
    micro = prf(tp.sum(), fp.sum(), fn.sum())
    macro = [float(np.mean(m)) if len(observations) else 0.0 for m in prf(tp, fp, fn)]
    for i, name in enumerate(('precision', 'recall', 'f1')):
      out[f'clinical_{name}_micro_{suffix}'] = float(micro[i])
      out[f'clinical_{name}_macro_{suffix}'] = macro[i]
  return out
