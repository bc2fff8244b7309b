"""Box parsing from text, IoU, and AP/mAP checked against pycocotools and by hand."""
import math

import numpy as np
import pytest

from radjax.eval.metrics import grounding


def box(label, *coords, **kw):
  return {'label': label, 'box': tuple(coords), **kw}


def test_parse_radvlm_style_and_class_names():
  text = ('There is a nodule located at the coordinates [0.12, 0.30, 0.25, 0.41] and '
          '[0.60, 0.20, 0.70, 0.30]; Pleural Effusion [0.5, 0.6, 0.9, 0.85].')
  boxes, bad = grounding.parse_boxes(text, vocab=['Pleural Effusion', 'Lung Lesion'])
  assert bad == 0
  # "nodule" reaches Lung Lesion through the labeler; the second box inherits it.
  assert [b['label'] for b in boxes] == ['Lung Lesion', 'Lung Lesion', 'Pleural Effusion']
  assert boxes[0]['box'] == (0.12, 0.30, 0.25, 0.41)
  # Vocabulary match is case-insensitive and returns the vocabulary's spelling; the
  # longest name wins when two end at the same place.
  boxes, _ = grounding.parse_boxes('pleural effusion: [0.1, 0.1, 0.2, 0.2]',
                                   vocab=['Effusion', 'Pleural Effusion'])
  assert boxes[0]['label'] == 'Pleural Effusion'


def test_unnamed_box_takes_the_rows_single_class_else_empty():
  text = 'This sentence is located at the coordinates [0.1, 0.2, 0.3, 0.4] on the image.'
  assert grounding.parse_boxes(text, default_label='left lung')[0][0]['label'] == 'left lung'
  assert grounding.parse_boxes(text)[0][0]['label'] == ''
  # A named box does not leak its class across other words to the next box.
  boxes, _ = grounding.parse_boxes('Pneumothorax [0.1, 0.1, 0.2, 0.2]. Also see here '
                                   '[0.3, 0.3, 0.4, 0.4]', default_label='x')
  assert [b['label'] for b in boxes] == ['Pneumothorax', 'x']


@pytest.mark.parametrize('text', [
    '[0.5, 0.2, 0.3, 0.4]',          # x2 < x1
    '[0.1, 0.4, 0.3, 0.4]',          # zero height
    '[0.1, 0.2, 1.3, 0.4]',          # out of [0, 1]
    '[-0.1, 0.2, 0.3, 0.4]',
    '[0.1, 0.2, 0.3]',               # three numbers
    '[0.1, 0.2, 0.3, 0.4, 0.5]',
    '[0.1, 0.2, 0.x, 0.4]',          # unparseable
    'a mass at [0.1, 0.2, 0.3',      # cut off by max_new_tokens
    '[0.1. 0.2. 0.3. 0.4]',
])
def test_malformed_boxes_are_counted_not_scored(text):
  boxes, bad = grounding.parse_boxes(text)
  assert boxes == [] and bad == 1


def test_brackets_without_numbers_are_not_box_attempts():
  assert grounding.parse_boxes('Findings: [redacted] normal.') == ([], 0)
  assert grounding.parse_boxes('') == ([], 0)


def test_iou():
  a = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]
  b = [[0.25, 0.25, 0.75, 0.75], [0.6, 0.6, 0.7, 0.7]]
  m = grounding.iou_matrix(a, b)
  np.testing.assert_allclose(m[0], [0.0625 / (0.25 + 0.25 - 0.0625), 0.0])
  np.testing.assert_allclose(m[1], [0.25, 0.01])
  assert grounding.iou_matrix([], b).shape == (0, 2)


def test_ap_hand_worked():
  # Detections by confidence: TP, FP, TP, FP; 3 references, one never found.
  # precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3; envelope 1, 2/3, 2/3, 1/2.
  tp = [True, False, True, False]
  assert grounding.average_precision(tp, 3) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)
  # 101 points: recall thresholds 0..0.33 see 1, 0.34..0.66 see 2/3, the rest 0.
  assert grounding.average_precision(tp, 3, 'coco101') == pytest.approx((34 + 22) / 101)
  assert grounding.average_precision([], 3) == 0.0
  assert math.isnan(grounding.average_precision([], 0))
  # Equal confidences are one threshold: precision 1/2 at recall 1/3, then 2/4 at 2/3.
  assert grounding.average_precision(tp, 3, scores=[2, 2, 1, 1]) == pytest.approx(1 / 3)


def test_scores_hand_worked_example():
  refs = [[box('A', 0.0, 0.0, 0.5, 0.5), box('B', 0.5, 0.5, 1.0, 1.0)],
          [box('A', 0.1, 0.1, 0.3, 0.3)]]
  preds = [[box('A', 0.0, 0.0, 0.5, 0.4),     # IoU 0.8 -> TP
            box('A', 0.0, 0.0, 0.5, 0.5)],    # duplicate of a matched box -> FP
           [box('A', 0.5, 0.5, 0.6, 0.6)]]    # misses -> FP
  s = grounding.grounding_scores(preds, refs)
  # A, by confidence: rank 0 of rows 0 and 1 (TP, FP: one threshold, precision 1/2 at
  # recall 1/2), then rank 1 of row 0 (FP); 2 references -> AP = 1/4. B has a reference
  # and no prediction -> AP 0.
  assert s['grounding_AP@0.5/A'] == pytest.approx(0.25)
  assert s['grounding_AP@0.5/B'] == 0.0
  assert s['grounding_mAP@0.5'] == pytest.approx(0.125)
  assert s['grounding_precision@0.5'] == pytest.approx(1 / 3)
  assert s['grounding_recall@0.5'] == pytest.approx(1 / 3)
  # Row 0: A pairs (0.8 is beaten by the exact duplicate, 1.0), one A pred and B unmatched;
  # row 1: no overlap. Sum 1.0 over 3 + 2 boxes.
  assert s['grounding_mean_iou'] == pytest.approx(1.0 / 5)
  assert s['grounding_num_pred_boxes'] == 3 and s['grounding_num_ref_boxes'] == 3


def test_edge_cases_no_predictions_and_no_references():
  refs = [[box('A', 0.1, 0.1, 0.4, 0.4)], []]
  s = grounding.grounding_scores([[], []], refs)
  assert s['grounding_mAP@0.5'] == 0.0 and s['grounding_precision@0.5'] == 0.0
  # A class predicted but absent from every reference has no AP and does not drag mAP.
  s = grounding.grounding_scores([[box('A', 0.1, 0.1, 0.4, 0.4)],
                                  [box('Z', 0.1, 0.1, 0.4, 0.4)]], refs)
  assert s['grounding_mAP@0.5'] == 1.0 and 'grounding_AP@0.5/Z' not in s
  assert s['grounding_precision@0.5'] == 0.5
  s = grounding.grounding_scores([[], []], [[], []])
  assert 'grounding_mAP@0.5' not in s and 'grounding_mean_iou' not in s
  with pytest.raises(ValueError, match='1 prediction rows vs 2 references'):
    grounding.grounding_scores([[]], [[], []])


def test_ap_does_not_depend_on_the_order_of_the_rows():
  # One box per answer: every detection ranks first in its row, so all tie. Half hit: one
  # threshold at precision 1/2, recall 1/2, whichever row comes first (ties broken by row
  # order gave 1/2 with the hits first, 1/4 with them last).
  hit, miss = [box('A', 0.1, 0.1, 0.3, 0.3)], [box('A', 0.6, 0.6, 0.8, 0.8)]
  refs = [[box('A', 0.1, 0.1, 0.3, 0.3)]] * 4
  for preds in ([hit, hit, miss, miss], [miss, miss, hit, hit], [miss, hit, miss, hit]):
    assert grounding.grounding_scores(preds, refs)['grounding_mAP@0.5'] == pytest.approx(0.25)
    coco = grounding.grounding_scores(preds, refs, method='coco101')
    assert coco['grounding_mAP@0.5'] == pytest.approx(51 * 0.5 / 101)  # recall 0..0.5


def test_labels_match_case_insensitively():
  s = grounding.grounding_scores([[box('lung lesion', 0.1, 0.1, 0.4, 0.4)]],
                                 [[box('Lung Lesion', 0.1, 0.1, 0.4, 0.4)]])
  assert s['grounding_AP@0.5/Lung Lesion'] == 1.0 and s['grounding_mean_iou'] == 1.0


def _random_boxes(rng, n):
  xy = rng.uniform(0, 0.7, (n, 2))
  wh = rng.uniform(0.05, 0.3, (n, 2))
  return np.concatenate([xy, xy + wh], 1)


def test_ap_matches_pycocotools():
  coco_mod = pytest.importorskip('pycocotools.coco')
  cocoeval_mod = pytest.importorskip('pycocotools.cocoeval')
  rng = np.random.default_rng(0)
  classes = ['A', 'B', 'C']
  refs, preds = [], []
  for _ in range(12):
    r = [box(classes[rng.integers(3)], *b) for b in _random_boxes(rng, rng.integers(0, 4))]
    # Predictions: jittered copies of some references plus random extras.
    p = [box(b['label'], *np.clip(np.asarray(b['box']) + rng.normal(0, 0.03, 4), 0, 1),
             score=float(rng.uniform())) for b in r if rng.uniform() < 0.8]
    p += [box(classes[rng.integers(3)], *b, score=float(rng.uniform()))
          for b in _random_boxes(rng, rng.integers(0, 3))]
    p = [b for b in p if b['box'][2] > b['box'][0] and b['box'][3] > b['box'][1]]
    refs.append(r)
    preds.append(p)
  ours = grounding.grounding_scores(preds, refs, method='coco101')

  scale = 1000.0  # pycocotools' area ranges assume pixels

  def xywh(b):
    x1, y1, x2, y2 = (c * scale for c in b['box'])
    return [x1, y1, x2 - x1, y2 - y1]

  gt = coco_mod.COCO()
  gt.dataset = {
      'images': [{'id': i} for i in range(len(refs))],
      'categories': [{'id': k, 'name': c} for k, c in enumerate(classes)],
      'annotations': [{'id': n + 1, 'image_id': i, 'category_id': classes.index(b['label']),
                       'bbox': xywh(b), 'area': xywh(b)[2] * xywh(b)[3], 'iscrowd': 0}
                      for n, (i, b) in enumerate((i, b) for i, r in enumerate(refs) for b in r)],
  }
  gt.createIndex()
  dt = gt.loadRes([{'image_id': i, 'category_id': classes.index(b['label']), 'bbox': xywh(b),
                    'score': b['score']} for i, p in enumerate(preds) for b in p])
  ev = cocoeval_mod.COCOeval(gt, dt, 'bbox')
  ev.params.iouThrs = np.array([0.5])
  ev.evaluate()
  ev.accumulate()
  prec = ev.eval['precision'][0, :, :, 0, -1]  # IoU 0.5, all areas, maxDets 100
  checked = 0
  for k, c in enumerate(classes):
    if (prec[:, k] > -1).any():
      assert ours[f'grounding_AP@0.5/{c}'] == pytest.approx(prec[:, k].mean(), abs=1e-9)
      checked += 1
  assert checked == 3
  assert ours['grounding_mAP@0.5'] == pytest.approx(prec[prec > -1].mean(), abs=1e-9)


def test_in_loop_grounding_reads_the_records_own_classes():
  """VinDr-CXR classes that are no CheXpert observation: a box answered with the wrong
  class is no hit in the training-time evaluators (as in `radjax.eval score`)."""
  from radjax.eval.evaluators.instruction import SCORERS
  box = {'box': [0.1, 0.1, 0.3, 0.3]}
  examples = [{'boxes': [{**box, 'label': c}]} for c in ('Calcification', 'ILD', 'Emphysema')]
  refs = ['Calcification at [0.10, 0.10, 0.30, 0.30].', 'ILD at [0.10, 0.10, 0.30, 0.30].',
          'Emphysema at [0.10, 0.10, 0.30, 0.30].']
  wrong = ['Emphysema at [0.10, 0.10, 0.30, 0.30].', 'Calcification at [0.10, 0.10, 0.30, 0.30].',
           'ILD at [0.10, 0.10, 0.30, 0.30].']
  for name in ('grounding', 'detection'):
    score = SCORERS[name][1]
    assert score(refs, refs, examples)[f'{name}_mAP@0.5'] == 1.0
    assert score(wrong, refs, examples)[f'{name}_mAP@0.5'] == 0.0
    # An unnamed box takes the record's one class.
    unnamed = ['At [0.10, 0.10, 0.30, 0.30].'] * 3
    assert score(unnamed, refs, examples)[f'{name}_mAP@0.5'] == 1.0


def test_anatomical_grounding_scores_chest_imagenome_regions():
  """RadVLM's region grounding (Chest ImaGenome): the evaluator asks anatomical_grounding
  (variant 0: the record's first region) and scores the region's box by its name."""
  from radjax.data import instructions
  from radjax.eval.evaluators.instruction import SCORERS
  task, score = SCORERS['anatomical_grounding']
  assert task == 'anatomical_grounding'
  example = {'boxes': [{'label': 'right lung', 'box': [0.1, 0.1, 0.4, 0.8]},
                       {'label': 'left lung', 'box': [0.6, 0.1, 0.9, 0.8]},
                       {'label': 'cardiac silhouette', 'box': [0.4, 0.4, 0.7, 0.8]}]}
  options = instructions.options_from_config({})
  prompt, ref = instructions.reference(instructions.TASKS[task](example, None, options))
  assert 'right lung' in prompt[-1]['text'] and '[0.10, 0.10, 0.40, 0.80]' in ref
  out = score([ref], [ref], [example])
  assert out['anatomical_grounding_mAP@0.5'] == 1.0
  assert out['anatomical_grounding_mean_iou'] == pytest.approx(1.0)
  wrong = 'The left lung is at [0.10, 0.10, 0.40, 0.80].'
  assert score([wrong], [ref], [example])['anatomical_grounding_mAP@0.5'] == 0.0
  assert score(['At [0.10, 0.10, 0.40, 0.80].'], [ref],
               [example])['anatomical_grounding_mAP@0.5'] == 1.0


def test_phrase_grounding_scores_the_box_whatever_finding_the_answer_names():
  """MS-CXR: the phrase is given, its box is asked. An answer echoing the phrase ('The left
  lower lobe consolidation is at ...') or naming the finding scored 0 with the exact box,
  its class read from the name against the unnamed reference."""
  from radjax.data import instructions
  from radjax.eval.evaluators.instruction import SCORERS
  example = {'id': 'x', 'boxes': [{'box': [0.1, 0.2, 0.4, 0.6], 'label': 'Pneumonia',
                                   'phrase': 'left lower lobe consolidation'}]}
  ref = instructions.reference(instructions.phrase_grounding(example, None,
                                                             instructions.Options()))[1]
  score = SCORERS['phrase_grounding'][1]
  for answer in (ref, 'The left lower lobe consolidation is at [0.10, 0.20, 0.40, 0.60].',
                 'Pneumonia at [0.10, 0.20, 0.40, 0.60].'):
    assert score([answer], [ref], [example])['phrase_grounding_mAP@0.5'] == 1.0, answer
  assert score(['Pneumonia at [0.50, 0.20, 0.90, 0.60].'], [ref],
               [example])['phrase_grounding_mAP@0.5'] == 0.0


@pytest.mark.parametrize('answer, want', [
    ('"Yes"', True), ("'No'", False), ('"Yes."', True), ('Yes?', True), ('(Yes)', True),
    ('**No**', False), ('Yes, there is.', True), ('Maybe.', None), ('', None)])
def test_vqa_reads_a_quoted_or_marked_up_answer(answer, want):
  from radjax.eval.evaluators import instruction
  assert instruction._yes(answer) is want


def test_a_box_at_exactly_the_iou_threshold_is_a_hit():
  ref = [[{'label': 'A', 'box': (0.0, 0.0, 0.5, 1.0)}]]
  pred = [[{'label': 'A', 'box': (0.0, 0.0, 1.0, 1.0)}]]  # IoU exactly 0.5
  s = grounding.grounding_scores(pred, ref, iou_threshold=0.5)
  assert s['grounding_recall@0.5'] == 1.0 and s['grounding_AP@0.5/A'] == 1.0


def test_in_loop_scorers_score_answers_against_references_not_the_reverse():
  """A refused / unreadable answer counts as unanswered and wrong; a reference that is no
  yes/no is not scored; one box too many lowers precision, not recall; one finding
  missed lowers recall, not precision."""
  from radjax.eval.evaluators.instruction import SCORERS
  vqa = SCORERS['vqa'][1]
  assert vqa(['Yes.', 'Maybe', 'No'], ['Yes.', 'No.', 'Maybe.'], None) == {
      'vqa_accuracy': 0.5, 'vqa_unanswered': 1.0}
  cls = SCORERS['classification'][1](['Cardiomegaly.'], ['Cardiomegaly, Edema.'], None)
  assert (cls['classification_micro_precision'], cls['classification_micro_recall']) == (1.0, 0.5)
  example = [{'boxes': [{'label': 'Nodule', 'box': [0.1, 0.1, 0.3, 0.3]}]}]
  two = 'Nodule at [0.10, 0.10, 0.30, 0.30]. Nodule at [0.60, 0.60, 0.90, 0.90].'
  out = SCORERS['grounding'][1]([two], ['Nodule at [0.10, 0.10, 0.30, 0.30].'], example)
  assert (out['grounding_precision@0.5'], out['grounding_recall@0.5']) == (0.5, 1.0)
  assert (out['grounding_num_pred_boxes'], out['grounding_num_ref_boxes']) == (2.0, 1.0)
