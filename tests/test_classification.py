"""Label lists parsed from answers; multi-label P/R/F1 against hand-computed values
(sklearn is not installed in the venv, so the expected numbers are worked out below)."""
import pytest

from radjax.eval.metrics import classification as cl

VOCAB = ['Cardiomegaly', 'Edema', 'Pleural Effusion', 'Lung Lesion', 'No Finding']


def test_parse_radvlm_answer():
  labels, unknown = cl.parse_labels(
      'The following abnormalities are identified: cardiomegaly, Edema and pleural effusion.',
      VOCAB)
  assert labels == ['Cardiomegaly', 'Edema', 'Pleural Effusion'] and unknown == []


def test_parse_separators_synonyms_negation_and_unknowns():
  labels, unknown = cl.parse_labels('Nodule; enlarged heart\nno edema; weird thing', VOCAB)
  # Synonyms through the labeler's mention patterns; the negated item asserts nothing.
  assert labels == ['Lung Lesion', 'Cardiomegaly']
  assert unknown == ['weird thing']
  assert cl.parse_labels('None.', VOCAB) == ([], [])
  assert cl.parse_labels('No abnormalities', VOCAB) == ([], [])
  assert cl.parse_labels('', VOCAB) == ([], [])
  # "No Finding" is a label of its own when the vocabulary has it.
  assert cl.parse_labels('No Finding', VOCAB)[0] == ['No Finding']
  # Duplicates collapse; a vocabulary name inside a longer item is found.
  assert cl.parse_labels('edema, Edema, small left pleural effusion', VOCAB)[0] == [
      'Edema', 'Pleural Effusion']


@pytest.mark.parametrize('answer, want', [
    # A negation covers the rest of its clause (radiology's "No X, Y, or Z."), and no further.
    ('There is no pneumothorax.', []),
    ('No pleural effusion or pneumothorax.', []),
    ('No focal consolidation, pleural effusion, or edema.', []),
    ('Negative for edema and consolidation.', []),
    ('Cardiomegaly. No pleural effusion or pneumothorax.', ['Cardiomegaly']),
    ('Cardiomegaly without edema.', ['Cardiomegaly']),
    ('There is cardiomegaly with no edema.', ['Cardiomegaly']),
    ('Pneumothorax is not seen; edema.', ['Edema']),
    ('No edema but a pleural effusion.', ['Pleural Effusion']),
    # "name: value" pairs: each its own label or negation (the colon was read as a preamble).
    ('Cardiomegaly: present; Edema: absent', ['Cardiomegaly']),
    ('Findings: Cardiomegaly: yes, Edema: no, Pneumothorax: 1', ['Cardiomegaly', 'Pneumothorax']),
    ('Edema: negative.\nPleural Effusion: Positive.', ['Pleural Effusion']),
    ('Impression: no pneumothorax. Cardiomegaly.', ['Cardiomegaly']),
    # A pair's name is its own clause: not the sentence before it.
    ('Moderate cardiomegaly. Pneumothorax: absent', ['Cardiomegaly']),
    ('There is cardiomegaly. Edema: no.', ['Cardiomegaly']),
    ('Cardiomegaly: present; Impression: edema', ['Cardiomegaly', 'Edema']),
])
def test_negated_findings_in_free_text_answers_assert_nothing(answer, want):
  """A base or converted model's answers: each of these read its negated findings as
  present (only an item starting with 'no' was negated)."""
  vocab = VOCAB + ['Pneumothorax', 'Consolidation']
  assert cl.parse_labels(answer, vocab)[0] == want


def test_parse_without_vocabulary_keeps_items():
  labels, unknown = cl.parse_labels('Nodule, Aortic ectasia')
  assert labels == ['Lung Lesion', 'aortic ectasia'] and unknown == ['Aortic ectasia']


def test_multilabel_scores_hand_computed():
  truth = [{'A', 'B'}, {'A'}, set(), {'C'}]
  pred = [{'A'}, {'A', 'C'}, set(), {'B'}]
  s = cl.multilabel_scores(pred, truth)
  assert (s['A/precision'], s['A/recall'], s['A/f1'], s['A/support']) == (1, 1, 1, 2)
  assert (s['B/f1'], s['C/f1']) == (0, 0)
  # micro: tp 2, fp 2, fn 2.
  assert s['micro_precision'] == s['micro_recall'] == s['micro_f1'] == 0.5
  assert s['macro_f1'] == pytest.approx(1 / 3) and s['macro_precision'] == pytest.approx(1 / 3)
  # Per example P/R/F1: (1, 1/2, 2/3), (1/2, 1, 2/3), both empty (1, 1, 1), (0, 0, 0).
  assert s['samples_precision'] == pytest.approx(0.625)
  assert s['samples_recall'] == pytest.approx(0.625)
  assert s['samples_f1'] == pytest.approx(7 / 12)
  assert s['exact_match'] == 0.25 and s['num_examples'] == 4


def test_fixed_label_set_scores_unseen_labels_zero():
  s = cl.multilabel_scores([{'A'}], [{'A'}], labels=['A', 'B'])
  assert s['B/f1'] == 0.0 and s['macro_f1'] == 0.5 and s['micro_f1'] == 1.0
  with pytest.raises(ValueError, match='1 predictions vs 0 references'):
    cl.multilabel_scores([{'A'}], [])


def test_classification_scores_end_to_end():
  s = cl.classification_scores(
      ['Cardiomegaly and edema', 'Fracture', '', 'pleural effusion, gibberish'],
      [['cardiomegaly'], ['Edema'], [], ['Pleural Effusion']])
  # Fracture is a CheXpert name, so it is a false positive rather than ignored.
  assert s['classification_Fracture/precision'] == 0.0
  assert s['classification_Cardiomegaly/f1'] == 1.0
  # tp: Cardiomegaly, Pleural Effusion; fp: Edema (row 0), Fracture; fn: Edema (row 1).
  assert s['classification_micro_precision'] == 0.5
  assert s['classification_micro_recall'] == pytest.approx(2 / 3)
  assert s['classification_num_unknown_labels'] == 1


def test_demo_finding_scores_read_the_labeler():
  from radjax.eval.evaluators import reports as evaluator
  assert evaluator.report_findings(
      'Heart is enlarged. No pleural effusion. Possible left lower lobe consolidation. '
      'Right upper lobe nodule.') == {'cardiomegaly', 'consolidation', 'nodule'}
  assert evaluator.report_findings('') == set()
  ex = {'labels': {'Cardiomegaly': 1, 'Pneumothorax': 0}, 'report': {'findings': 'Effusion.'}}
  assert evaluator.true_findings(ex) == {'cardiomegaly'}
  # Uncertain counts as positive on both sides: a hedged report of a hedged label is a hit.
  hedged = {'labels': {'Pleural Effusion': -1}}
  assert evaluator.true_findings(hedged) == evaluator.report_findings(
      'Possible small left pleural effusion.') == {'pleural_effusion'}
  assert evaluator.true_findings({'report': {'findings': 'Small left pneumothorax.',
                                             'impression': ''}}) == {'pneumothorax'}
  s = evaluator.finding_scores([{'cardiomegaly'}, set()], [{'cardiomegaly'}, {'nodule'}])
  assert s['cardiomegaly/f1'] == 1.0 and s['nodule/recall'] == 0.0
  assert s['micro_precision'] == 1.0 and s['micro_recall'] == 0.5
  assert s['macro_f1'] == pytest.approx(1 / 5)
  # Always predicting all 5: tp 2, fp 8 -> micro F1 2*2 / (2 + 10).
  assert s['baseline_all_positive_micro_f1'] == pytest.approx(4 / 12)


def test_support_counts_reference_labels_not_predictions():
  s = cl.multilabel_scores([{'A'}, {'A'}, {'A'}], [{'A'}, set(), {'B'}])
  assert s['A/support'] == 1 and s['B/support'] == 1
