"""Grounding metrics: boxes parsed from generated text, scored against reference boxes.

Box text format (RadVLM's, in the schema's coordinates): `[x1, y1, x2, y2]`, fractions
of image width and height in [0, 1], origin top left, x1 < x2 and y1 < y2, usually
written with 2 decimals. Several boxes of one finding are joined with ", " or " and ":

  "Lung Lesion [0.12, 0.30, 0.25, 0.41]; Pleural Effusion [0.55, 0.60, 0.90, 0.85]"
  "A nodule located at the coordinates [0.12, 0.30, 0.25, 0.41] and [0.6, 0.2, 0.7, 0.3]."

A box's class is the finding named in the text between it and the previous box: a
vocabulary name (case-insensitive), else a CheXpert observation found by the labeler's
mention patterns ("nodule" -> "Lung Lesion"). A box with no name of its own takes the
previous box's class when only ", " or "and" separate them, else the row's one
reference class if it has exactly one (phrase grounding), else "".

A bracket opening on a number that is not 4 numbers in [0, 1] with x1 < x2 and
y1 < y2, or is cut off, is malformed: counted, never scored.

AP is per class at one IoU threshold, COCO-style matching (by descending confidence
each prediction takes the best still-unmatched reference box of its class and image
when IoU >= threshold) and all-point interpolation (VOC 2010+; "coco101" gives
pycocotools' 101-point variant). Text carries no confidences, so a box's confidence is
its order of appearance among its report's boxes of its class (a report's first box of
each class ranks first). Detections of equal confidence count as one threshold (as
sklearn's average_precision_score): precision and recall are read after the whole group,
so the order of the rows does not change AP (pycocotools breaks such ties by image order;
with distinct scores the two agree). Classes with no reference box are left out of mAP
(torchmetrics and pycocotools do the same).
"""

from __future__ import annotations

import re

import numpy as np

from radjax.eval.metrics import labeler

BOX = re.compile(r'\[\s*([-+]?\.?\d[-+\d.,\s]*)(\])?')
_NUMBER = re.compile(r'[-+]?(?:\d+\.?\d*|\.\d+)')
_JOINER = re.compile(r'^\s*(?:,|and|,\s*and|&)?\s*$', re.IGNORECASE)


def _parse_coords(body: str) -> tuple[float, ...] | None:
  parts = [p.strip() for p in body.split(',')]
  if len(parts) != 4 or not all(_NUMBER.fullmatch(p) for p in parts):
    return None
  x1, y1, x2, y2 = coords = tuple(float(p) for p in parts)
  if not all(0.0 <= c <= 1.0 for c in coords) or x2 <= x1 or y2 <= y1:
    return None
  return coords


def _name_in(phrase: str, vocab: dict[str, str]) -> str | None:
  """The class named last in `phrase` (longest name on ties): a vocabulary name, else a
  CheXpert observation by the labeler's mention patterns."""
  low = phrase.lower()
  found = [((m.end(), m.end() - m.start()), name) for key, name in vocab.items()
           for m in re.finditer(rf'(?<!\w){re.escape(key)}(?!\w)', low)]
  if not found:
    found = [((m.end(), m.end() - m.start()), obs) for obs, pattern in labeler._MENTIONS.items()
             for m in pattern.finditer(low)]
  return max(found, key=lambda f: f[0])[1] if found else None


def parse_boxes(text: str, vocab=(), default_label: str | None = None
                ) -> tuple[list[dict], int]:
  """([{"label", "box": (x1, y1, x2, y2)}] in order of appearance, number malformed)."""
  vocab = {v.strip().lower(): v for v in vocab if v and v.strip()}
  boxes, malformed, prev_end, prev_label = [], 0, 0, None
  for m in BOX.finditer(text or ''):
    phrase = text[prev_end:m.start()]
    coords = _parse_coords(m.group(1)) if m.group(2) else None
    label = _name_in(phrase, vocab)
    if label is None:
      label = prev_label if prev_label is not None and _JOINER.match(phrase) else default_label
    prev_end, prev_label = m.end(), label
    if coords is None:
      malformed += 1
      continue
    boxes.append({'label': label or '', 'box': coords})
  return boxes, malformed


def parse_prediction(text: str, reference: list[dict], classes) -> tuple[list[dict], int]:
  """parse_boxes of a generated answer with the vocabulary `classes` (every reference
  class, so a box given another class is read as that class); an unnamed box takes the
  reference's class when it has only one."""
  own = {b['label'] for b in reference}
  return parse_boxes(text, classes, default_label=own.pop() if len(own) == 1 else None)


def iou_matrix(a, b) -> np.ndarray:
  """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), xyxy."""
  a = np.asarray(a, float).reshape(-1, 4)
  b = np.asarray(b, float).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def average_precision(tp, num_gt: int, method: str = 'all_points', scores=None) -> float:
  """AP of detections already sorted by descending confidence; `tp` marks true positives.
  `scores`, their confidences: a run of equal ones is one threshold, read at its end."""
  tp = np.asarray(tp, bool)
  if num_gt == 0:
    return float('nan')
  if tp.size == 0:
    return 0.0
  ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
  if scores is not None:
    scores = np.asarray(scores, float)
    ends = np.r_[scores[1:] != scores[:-1], True]
    ctp, cfp = ctp[ends], cfp[ends]
  recall = ctp / num_gt
  precision = ctp / (ctp + cfp)
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  if method == 'coco101':
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side='left')
    return float(np.mean(np.where(idx < len(envelope),
                                  envelope[np.minimum(idx, len(envelope) - 1)], 0.0)))
  if method != 'all_points':
    raise ValueError(f'method {method!r} is not all_points or coco101')
  steps = np.diff(np.concatenate([[0.0], recall]))
  return float(np.sum(steps * envelope))


def _label(box: dict) -> str:
  return box.get('label') or ''


def _key(label: str | None) -> str:
  return (label or '').strip().lower()


def _mean_iou_terms(pred: list[dict], ref: list[dict]) -> tuple[float, int]:
  """(sum of IoU over one-to-one same-class pairs, matched + unmatched box count)."""
  total, count = 0.0, 0
  for k in {_key(_label(b)) for b in pred + ref}:
    p = [b['box'] for b in pred if _key(_label(b)) == k]
    r = [b['box'] for b in ref if _key(_label(b)) == k]
    ious = iou_matrix(p, r)
    matched = 0
    # Greedy by IoU: pairs the best-overlapping boxes first.
    while ious.size and ious.max() > 0:
      i, j = np.unravel_index(np.argmax(ious), ious.shape)
      total += ious[i, j]
      ious[i, :], ious[:, j] = -1, -1
      matched += 1
    count += len(p) + len(r) - matched
  return total, count


def grounding_scores(predictions: list[list[dict]], references: list[list[dict]],
                     iou_threshold: float = 0.5, method: str = 'all_points') -> dict:
  """Flat grounding metrics over rows of predicted and reference boxes.

  Each box is {"label", "box": [x1, y1, x2, y2]} with an optional "score" (higher is
  more confident; absent: order of appearance among the row's boxes of its class). Keys,
  t = iou_threshold:
    grounding_mAP@t, grounding_AP@t/<class>   all-point AP; classes with references
    grounding_precision@t, grounding_recall@t over all boxes, same matching
    grounding_mean_iou   IoU of one-to-one same-class pairs, unmatched boxes scoring 0
    grounding_num_pred_boxes, grounding_num_ref_boxes, grounding_num_rows
  """
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} prediction rows vs {len(references)} references')
  t = f'{iou_threshold:g}'
  names: dict[str, str] = {}
  for rows in (references, predictions):
    for row in rows:
      for b in row:
        names.setdefault(_key(_label(b)), _label(b))
  num_pred = sum(len(p) for p in predictions)
  num_ref = sum(len(r) for r in references)
  out = {'grounding_num_rows': float(len(references)),
         'grounding_num_pred_boxes': float(num_pred),
         'grounding_num_ref_boxes': float(num_ref)}
  aps, total_tp = {}, 0
  for k in sorted(names):
    dets = []  # (-score, row, rank, box)
    for row, boxes in enumerate(predictions):
      for rank, b in enumerate(x for x in boxes if _key(_label(x)) == k):
        dets.append((-float(b.get('score', -rank)), row, rank, b['box']))
    dets.sort(key=lambda d: d[:3])
    refs = [[b['box'] for b in boxes if _key(_label(b)) == k] for boxes in references]
    used = [np.zeros(len(r), bool) for r in refs]
    tp = np.zeros(len(dets), bool)
    for d, (_, row, _, box) in enumerate(dets):
      if not refs[row]:
        continue
      ious = np.where(used[row], -1.0, iou_matrix([box], refs[row])[0])
      j = int(np.argmax(ious))
      if ious[j] >= iou_threshold:
        tp[d], used[row][j] = True, True
    total_tp += int(tp.sum())
    n_ref = sum(len(r) for r in refs)
    if n_ref:
      aps[names[k]] = average_precision(tp, n_ref, method, [d[0] for d in dets])
  for name, ap in aps.items():
    out[f'grounding_AP@{t}/{name}'] = ap
  if aps:
    out[f'grounding_mAP@{t}'] = float(np.mean(list(aps.values())))
  out[f'grounding_precision@{t}'] = total_tp / num_pred if num_pred else 0.0
  if num_ref:
    out[f'grounding_recall@{t}'] = total_tp / num_ref
  terms = [_mean_iou_terms(p, r) for p, r in zip(predictions, references)]
  count = sum(c for _, c in terms)
  if count:
    out['grounding_mean_iou'] = float(sum(s for s, _ in terms) / count)
  return out
