"""Agreement of the rule-based labeler with the OpenI MeSH annotations.

The Indiana University reports carry human MeSH indexing ("Cardiomegaly/mild",
"Pulmonary Atelectasis/base/left", "normal"). A MeSH term mapped to a CheXpert
observation counts as a positive reference label; an observation with no mapped
term counts as absent. The labeler predicts positive when it says 1 or -1
(MeSH indexers annotate hedged findings too), except for DEFINITE_ONLY.

Rules were tuned on even report ids only; agreement(split="odd") is the held-out
number. Run: python -m tools.mesh_agreement
"""

from __future__ import annotations

import argparse

from data_prep.openi_reports import mesh_observations
from radjax.eval.metrics.labeler import label_report, report_text

# Observations MeSH indexes consistently enough to score against; No Finding is
# derived and Enlarged Cardiomediastinum is too rarely indexed to be a reference.
# MeSH indexers record a hedged "opacity, may represent pneumonia" as the finding
# seen (Opacity), not the hedged diagnosis, yet do index hedged effusions or
# atelectasis. For the observations below only a definite (1) label counts as
# positive: the ones where that scored higher on the even ids (Pneumonia
# 0.65 -> 0.83, Lung Lesion 0.81 -> 0.86, Edema 0.84 -> 0.90, Consolidation
# 0.87 -> 0.91, Fracture 0.87 -> 0.89).
DEFINITE_ONLY = ('Pneumonia', 'Lung Lesion', 'Edema', 'Consolidation', 'Fracture')
SCORED = (
  'Cardiomegaly', 'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia',
  'Atelectasis', 'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
  'Support Devices',
)


def _reports(split: str) -> list[dict]:
  from data_prep.openi_reports import load_reports
  parity = {'even': 0, 'odd': 1}
  if split not in (*parity, 'all'):
    raise ValueError(f"split must be 'even', 'odd' or 'all', got {split!r}")
  return [r for r in load_reports() if split == 'all' or r['id'] % 2 == parity[split]]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
  p = tp / (tp + fp) if tp + fp else 0.0
  r = tp / (tp + fn) if tp + fn else 0.0
  return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def agreement(split: str = 'odd', count_uncertain: bool = True) -> dict:
  """Per-observation and micro precision/recall/F1 of the labeler against MeSH.

  Reports with neither findings nor impression text are skipped. Returns
  {"reports": n, "per_observation": {obs: {...}}, "micro_precision", "micro_recall",
  "micro_f1", "min_f1"}.
  """
  counts = {obs: [0, 0, 0, 0] for obs in SCORED}  # tp, fp, fn, reference positives
  n = 0
  for report in _reports(split):
    text = report_text(report['findings'], report['impression'])
    if not text.strip():
      continue
    n += 1
    truth = mesh_observations(report['mesh'])
    labels = label_report(text)
    for obs in SCORED:
      hedged_ok = count_uncertain and obs not in DEFINITE_ONLY
      pred, true = labels[obs] in ((1, -1) if hedged_ok else (1,)), obs in truth
      c = counts[obs]
      c[0] += pred and true
      c[1] += pred and not true
      c[2] += true and not pred
      c[3] += true
  per = {}
  for obs, (tp, fp, fn, pos) in counts.items():
    p, r, f1 = _prf(tp, fp, fn)
    per[obs] = {'precision': p, 'recall': r, 'f1': f1, 'reference_positives': pos,
                'tp': tp, 'fp': fp, 'fn': fn}
  tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
  p, r, f1 = _prf(tp, fp, fn)
  return {'split': split, 'reports': n, 'per_observation': per, 'micro_precision': p,
          'micro_recall': r, 'micro_f1': f1, 'min_f1': min(v['f1'] for v in per.values())}


def format_table(result: dict) -> str:
  """Markdown table of an agreement() result."""
  lines = [f"OpenI reports ({result['split']} ids): {result['reports']}", '',
           '| Observation | MeSH positives | Precision | Recall | F1 |',
           '|---|---:|---:|---:|---:|']
  for obs, v in result['per_observation'].items():
    lines.append(f"| {obs} | {v['reference_positives']} | {v['precision']:.3f} "
                 f"| {v['recall']:.3f} | {v['f1']:.3f} |")
  lines.append(f"| **micro** | | {result['micro_precision']:.3f} | {result['micro_recall']:.3f} "
               f"| {result['micro_f1']:.3f} |")
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--split', default='odd', choices=('odd', 'even', 'all'))
  args = parser.parse_args(argv)
  print(format_table(agreement(args.split)))


if __name__ == '__main__':
  main()
