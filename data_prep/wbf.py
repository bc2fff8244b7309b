"""Weighted boxes fusion (Solovyev et al.), as `ensemble_boxes.weighted_boxes_fusion`
with conf_type='avg', for fusing several radiologists' boxes of one class.

Zero-area boxes are skipped. Per label (labels in order of first appearance), boxes are
visited by score, highest first, in ensemble_boxes' order: numpy's argsort reversed, so
equal scores (VinDr's boxes have none) go last box first. Each joins the cluster whose
fused box it overlaps most, if that IoU is above iou_thr, else starts a new cluster. A
cluster's box is the score-weighted mean of its members. `ensemble_boxes` is not a
dependency: it pulls in numba.
"""

from __future__ import annotations

import numpy as np


def iou(a: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """IoU of box a with each row of boxes ([x1, y1, x2, y2])."""
  x1 = np.maximum(a[0], boxes[:, 0])
  y1 = np.maximum(a[1], boxes[:, 1])
  x2 = np.minimum(a[2], boxes[:, 2])
  y2 = np.minimum(a[3], boxes[:, 3])
  inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / (area(a) + area(boxes) - inter)


def weighted_boxes_fusion(boxes, labels, scores=None, iou_thr: float = 0.1
                          ) -> list[tuple[list[float], str, int]]:
  """-> [(fused box, label, number of boxes fused)], clusters in order of creation."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.ones(len(boxes)) if scores is None else np.asarray(scores, np.float64)
  kept = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) != 0
  order = []
  for label in dict.fromkeys(labels):
    idx = np.asarray([i for i, lab in enumerate(labels) if lab == label and kept[i]], int)
    order.extend(idx[np.argsort(scores[idx])[::-1]])
  clusters: list[dict] = []
  for i in order:
    same = [c for c in clusters if c['label'] == labels[i]]
    best = None
    if same:
      overlaps = iou(boxes[i], np.stack([c['fused'] for c in same]))
      j = int(np.argmax(overlaps))
      if overlaps[j] > iou_thr:
        best = same[j]
    if best is None:
      best = {'label': labels[i], 'members': [], 'weights': []}
      clusters.append(best)
    best['members'].append(boxes[i])
    best['weights'].append(scores[i])
    w = np.asarray(best['weights'])
    best['fused'] = (np.stack(best['members']) * w[:, None]).sum(0) / w.sum()
  return [([float(v) for v in c['fused']], c['label'], len(c['members'])) for c in clusters]
