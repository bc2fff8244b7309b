"""All metrics for (generated, reference) pairs: clinical efficacy, NLG, and, when rows
carry them, grounding (reference `boxes`), classification (reference `labels`) and the
CheXbert / RadGraph plug-ins."""
from __future__ import annotations

from radjax.data.schema import CHEXPERT_OBSERVATIONS
from radjax.eval.metrics import classification, grounding
from radjax.eval.metrics.clinical import clinical_scores
from radjax.eval.metrics.labeler import label_report
from radjax.eval.metrics.nlg_metrics import nlg_scores, normalize


def score_reports(generated: list[str], references: list[str], meteor: bool = True,
                  text_norm: str = 'radjax') -> dict:
  metrics = clinical_scores([label_report(g) for g in generated],
                            [label_report(r) for r in references])
  metrics.update(nlg_scores(generated, references, meteor=meteor, text_norm=text_norm))
  return metrics


def _positive(labels: dict) -> set[str]:
  return {k for k, v in labels.items() if v in (1, -1)}


def per_sample_scores(generated: list[str], references: list[str],
                      text_norm: str = 'radjax') -> list[dict]:
  """Per report: BLEU-4, ROUGE-L and CIDEr (pycocoevalcap's per-example scores; CIDEr's
  document frequencies come from these references), the labeler's mentioned labels on
  both sides, and clinical_agreement_14: the share of the 14 observations whose
  positive-or-uncertain status agrees."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.rouge.rouge import Rouge

  if len(generated) != len(references):
    raise ValueError(f'{len(generated)} generations vs {len(references)} references')
  if not generated:
    return []
  res = {i: [normalize(g, text_norm)] for i, g in enumerate(generated)}
  gts = {i: [normalize(r, text_norm)] for i, r in enumerate(references)}
  bleu = Bleu(4).compute_score(gts, res, verbose=0)[1][3]
  rouge = Rouge().compute_score(gts, res)[1]
  cider = Cider().compute_score(gts, res)[1]
  out = []
  for i, (g, r) in enumerate(zip(generated, references)):
    lg, lr = label_report(g), label_report(r)
    pg, pr = _positive(lg), _positive(lr)
    agree = sum((o in pg) == (o in pr) for o in CHEXPERT_OBSERVATIONS)
    out.append({'BLEU-4': float(bleu[i]), 'ROUGE-L': float(rouge[i]), 'CIDEr': float(cider[i]),
                'labels_generated': {k: v for k, v in lg.items() if v is not None},
                'labels_reference': {k: v for k, v in lr.items() if v is not None},
                'clinical_agreement_14': agree / len(CHEXPERT_OBSERVATIONS)})
  return out


def score_rows(rows: list[dict], meteor: bool = True, chexbert: str | None = None,
               radgraph: dict | None = None, text_norm: str = 'radjax'
               ) -> tuple[dict, list[dict]]:
  """(metrics, per-row scores) for rows {"id", "generated", "reference"} with optional
  "boxes" ([{"label", "box"}]) and "labels" ([str]) references.

  Grounding is scored on the rows that have "boxes", classification on those that have
  "labels". `chexbert` is a CheXbert checkpoint directory; `radgraph` maps row ids to
  (generated, reference) RadGraph annotations.
  """
  generated = [r['generated'] for r in rows]
  references = [r['reference'] for r in rows]
  metrics = score_reports(generated, references, meteor=meteor, text_norm=text_norm)
  per_row = per_sample_scores(generated, references, text_norm)
  boxed = [i for i, r in enumerate(rows) if 'boxes' in r]
  if boxed:
    classes = sorted({b.get('label') or '' for i in boxed for b in rows[i]['boxes']} - {''})
    preds, refs, malformed = [], [], 0
    for i in boxed:
      ref = [{'label': b.get('label') or '', 'box': tuple(b['box'])} for b in rows[i]['boxes']]
      boxes, bad = grounding.parse_prediction(generated[i], ref, classes)
      preds.append(boxes)
      refs.append(ref)
      malformed += bad
      per_row[i].update(
          {'pred_boxes': [{'label': b['label'], 'box': list(b['box'])} for b in boxes],
           'num_malformed_boxes': bad,
           **{k.removeprefix('grounding_'): v for k, v in
              grounding.grounding_scores([boxes], [ref]).items()
              if k in ('grounding_mean_iou', 'grounding_recall@0.5')}})
    metrics.update(grounding.grounding_scores(preds, refs))
    metrics['num_malformed_boxes'] = float(malformed)
  labelled = [i for i, r in enumerate(rows) if 'labels' in r]
  if labelled:
    answers = [generated[i] for i in labelled]
    truth = [rows[i]['labels'] for i in labelled]
    metrics.update(classification.classification_scores(answers, truth))
    vocab = list(CHEXPERT_OBSERVATIONS) + [x for t in truth for x in t]
    for i in labelled:
      per_row[i]['pred_labels'] = classification.parse_labels(generated[i], vocab)[0]
  if chexbert:
    from radjax.eval.metrics.chexbert import chexbert_scores
    metrics.update(chexbert_scores(generated, references, chexbert))
  if radgraph is not None:
    from radjax.eval.metrics import radgraph as radgraph_lib
    keys = [radgraph_lib.annotation_key(r['id']) for r in rows]
    missing = [r['id'] for r, k in zip(rows, keys) if k not in radgraph]
    if missing:
      raise ValueError(f'RadGraph annotations missing for ids {missing[:5]}')
    pairs = [radgraph[k] for k in keys]
    metrics.update(radgraph_lib.radgraph_scores(pairs))
    for row, pair in zip(per_row, pairs):
      row.update(zip(('radgraph_f1_simple', 'radgraph_f1_partial', 'radgraph_f1_complete'),
                     radgraph_lib.report_rewards(*pair)))
  return metrics, per_row
