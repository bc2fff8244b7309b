"""Rule-based CheXpert labeler, clinical-efficacy scores, MeSH agreement and the CLI."""
import json

import pytest

from radjax.data.schema import CHEXPERT_OBSERVATIONS
from radjax.eval import __main__ as cli
from radjax.eval.metrics.clinical import clinical_scores
from radjax.eval.metrics.labeler import label_report


def mentioned(text):
  return {k: v for k, v in label_report(text).items() if v is not None}


def test_keys_are_the_14_observations():
  assert tuple(label_report('Heart size is normal.')) == CHEXPERT_OBSERVATIONS
  assert set(label_report('').values()) == {None}
  assert set(label_report(' . ').values()) == {None}  # no words: the same as empty


def test_negated_list_negates_every_item():
  labels = mentioned('No pleural effusion, pneumothorax, or focal consolidation.')
  assert labels == {'No Finding': 1, 'Pleural Effusion': 0, 'Pneumothorax': 0,
                    'Consolidation': 0}
  assert mentioned('Negative for pneumothorax or effusion.')['Pleural Effusion'] == 0
  assert mentioned('Free of infiltrate.')['Lung Opacity'] == 0


def test_negation_scope_ends_at_clause_and_breaker():
  labels = mentioned('No pneumothorax, but there is a small left effusion.')
  assert labels['Pneumothorax'] == 0 and labels['Pleural Effusion'] == 1
  assert mentioned('No evidence of pneumonia. Small right effusion.')['Pleural Effusion'] == 1
  # "No change" is not a negation.
  assert mentioned('No change in the small left pleural effusion.')['Pleural Effusion'] == 1


def test_post_negation():
  assert mentioned('Effusion is not seen.')['Pleural Effusion'] == 0
  assert mentioned('Pleural effusions are absent.')['Pleural Effusion'] == 0
  assert mentioned('The previously seen pneumothorax has resolved.')['Pneumothorax'] == 0
  # Not resolved: still there.
  for text in ('Pneumothorax has not resolved.', 'The effusion has not yet resolved.',
               'Pneumothorax is not yet resolved.'):
    assert 1 in mentioned(text).values(), text


def test_ruled_out_and_structured_answers_negate():
  for text, obs in (('Pneumonia is ruled out.', 'Pneumonia'),
                    ('Pneumothorax has been ruled out.', 'Pneumothorax'),
                    ('Pneumothorax is excluded.', 'Pneumothorax'),
                    ('Pneumonia is not likely.', 'Pneumonia'),
                    ('Pneumothorax: none.', 'Pneumothorax'),
                    ('Pleural effusion: absent.', 'Pleural Effusion'),
                    ('Pneumothorax? No.', 'Pneumothorax')):
    assert mentioned(text)[obs] == 0, text
  assert mentioned('Pneumothorax: small, apical.')['Pneumothorax'] == 1
  assert mentioned('Pneumothorax? Yes.')['Pneumothorax'] == 1
  # The same findings said two ways agree.
  scores = clinical_scores([label_report('No pneumothorax. No pleural effusion.')],
                           [label_report('Pneumothorax: none. Pleural effusion: none.')])
  assert scores['clinical_f1_micro_14'] == 1.0


def test_unlikely_negates():
  assert mentioned('Consolidation is unlikely.')['Consolidation'] == 0
  assert mentioned('Unlikely pneumonia.')['Pneumonia'] == 0


def test_a_graded_item_ends_a_negated_list_unless_the_list_goes_on():
  labels = mentioned('No pneumothorax, mild cardiomegaly.')
  assert labels['Pneumothorax'] == 0 and labels['Cardiomegaly'] == 1
  assert mentioned('No effusion, enlarged heart.')['Cardiomegaly'] == 1
  # "... large effusion, or pneumothorax": the grade belongs to the negated item.
  for text in ('No focal consolidation, large pleural effusion, or pneumothorax is seen.',
               'No evidence of consolidation, large pleural effusion/pneumothorax.'):
    labels = mentioned(text)
    assert labels['Pleural Effusion'] == 0 and labels['Pneumothorax'] == 0, text


def test_an_item_its_own_words_assert_ends_a_negated_list_unless_the_list_goes_on():
  labels = mentioned('Negative for pneumothorax or effusion, cardiomegaly noted.')
  assert (labels['Pneumothorax'], labels['Pleural Effusion'], labels['Cardiomegaly']) == (0, 0, 1)
  assert mentioned('No pneumothorax, a small effusion is seen.')['Pleural Effusion'] == 1
  for text in ('No pleural effusion, pneumothorax or focal consolidation is seen.',
               'No effusion, pneumothorax, or consolidation identified.',
               'No pneumothorax, effusion is not seen.'):
    labels = mentioned(text)
    assert {labels['Pleural Effusion'], labels['Pneumothorax']} == {0}, text


def test_uncertainty():
  assert mentioned('Pneumonia cannot be excluded.')['Pneumonia'] == -1
  assert mentioned('Cannot exclude pneumothorax.')['Pneumothorax'] == -1
  for text in ('Pleural effusion is not excluded.', 'Pneumonia is not ruled out.',
               'Effusion is not completely excluded.'):
    assert -1 in mentioned(text).values(), text
  assert mentioned('Possible small left effusion.')['Pleural Effusion'] == -1
  labels = mentioned('Right lower lobe opacity which may represent atelectasis.')
  assert labels['Lung Opacity'] == 1 and labels['Atelectasis'] == -1
  # A negation cue outranks an uncertainty cue inside its scope.
  assert mentioned('No focal consolidation to suggest pneumonia.')['Pneumonia'] == 0


def test_a_condition_asserts_nothing_up_to_its_comma():
  for text in ('If there is concern for fracture, obtain rib views.',
               'Recommend rib series if there is concern for fracture.',
               'if there is concern for fracture'):
    assert 'Fracture' not in mentioned(text), text
  # What follows the condition's comma, and other sentences, still count.
  assert mentioned('If clinically indicated, there is a small effusion.')['Pleural Effusion'] == 1
  assert mentioned('If there is concern, CT. Rib fracture is seen.')['Fracture'] == 1


def test_normal_statements():
  labels = mentioned('Heart size is normal. The lungs are clear.')
  assert labels['Cardiomegaly'] == 0
  for obs in ('Lung Opacity', 'Consolidation', 'Edema'):
    assert labels[obs] == 0
  assert mentioned('The heart is not enlarged.')['Cardiomegaly'] == 0
  assert mentioned('Normal cardiomediastinal silhouette.')['Enlarged Cardiomediastinum'] == 0


def test_positive_beats_uncertain_beats_negative():
  assert mentioned('No large effusion. Small left effusion.')['Pleural Effusion'] == 1
  assert mentioned('No effusion on the right. Possible left effusion.')['Pleural Effusion'] == -1


def test_heart_failure_makes_cardiomegaly_uncertain_as_chexperts_aggregator():
  """CheXpert's aggregator adds an uncertain Cardiomegaly for a positive or uncertain
  'chf' / 'heart failure' (both Edema mentions there); a stated Cardiomegaly still wins,
  a negated heart failure adds nothing."""
  assert mentioned('Findings consistent with CHF.') == {'Edema': 1, 'Cardiomegaly': -1}
  assert mentioned('Possible heart failure.') == {'Edema': -1, 'Cardiomegaly': -1}
  assert mentioned('Cardiomegaly. Congestive heart failure.') == {'Edema': 1,
                                                                 'Cardiomegaly': 1}
  assert mentioned('No congestive heart failure.') == {'Edema': 0, 'No Finding': 1}
  assert mentioned('Mild pulmonary edema.') == {'Edema': 1}


def test_synonyms():
  assert mentioned('The cardiac silhouette is mildly enlarged.')['Cardiomegaly'] == 1
  assert mentioned('Mild pulmonary vascular congestion.')['Edema'] == 1
  assert mentioned('Blunting of the left costophrenic angle.')['Pleural Effusion'] == 1
  assert mentioned('Left apical pleural thickening.')['Pleural Other'] == 1
  assert mentioned('Widened mediastinum.')['Enlarged Cardiomediastinum'] == 1
  assert mentioned('Old healed right rib fractures.')['Fracture'] == 1
  assert mentioned('Left PICC line with tip in the SVC.')['Support Devices'] == 1


def test_no_finding():
  assert label_report('No acute cardiopulmonary abnormality.')['No Finding'] == 1
  # Support devices do not rule out No Finding; any other positive or uncertain does.
  assert label_report('Right chest tube in place. No pneumothorax.')['No Finding'] == 1
  assert label_report('Mild cardiomegaly.')['No Finding'] is None
  assert label_report('Possible small effusion.')['No Finding'] is None


def test_clinical_scores_hand_computed():
  gen = [{'Cardiomegaly': 1, 'Edema': -1}, {'Pleural Effusion': 1}]
  ref = [{'Cardiomegaly': 1}, {'Pleural Effusion': 0, 'Edema': 1}]
  s = clinical_scores(gen, ref)
  # tp: Cardiomegaly@0; fp: Edema@0 (uncertain counts), Effusion@1; fn: Edema@1.
  assert s['clinical_precision_micro_5'] == pytest.approx(1 / 3)
  assert s['clinical_recall_micro_5'] == pytest.approx(1 / 2)
  assert s['clinical_f1_micro_5'] == pytest.approx(0.4)
  assert s['clinical_f1_micro_14'] == pytest.approx(0.4)
  assert s['clinical_f1_macro_5'] == pytest.approx(1 / 5)  # only Cardiomegaly scores 1
  assert s['clinical_f1_macro_14'] == pytest.approx(1 / 14)
  strict = clinical_scores(gen, ref, uncertain_as_positive=False)
  assert strict['clinical_f1_micro_5'] == pytest.approx(0.5)


def test_cli_label_round_trip(tmp_path):
  reports = tmp_path / 'r.jsonl'
  reports.write_text(json.dumps({'id': 'a', 'text': 'Mild cardiomegaly. No effusion.'}) + '\n\n'
                     + json.dumps({'id': 7, 'text': ''}) + '\n')
  out = tmp_path / 'l.jsonl'
  assert cli.main(['label', '--reports', str(reports), '--out', str(out)]) == 0
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r['id'] for r in rows] == ['a', 7]
  assert all(tuple(r['labels']) == CHEXPERT_OBSERVATIONS for r in rows)
  assert rows[0]['labels']['Cardiomegaly'] == 1 and rows[0]['labels']['Pleural Effusion'] == 0


def test_cli_malformed_row_names_line(tmp_path, capsys):
  reports = tmp_path / 'r.jsonl'
  reports.write_text('{"id": 1, "text": "ok"}\n{"id": 2}\n')
  assert cli.main(['label', '--reports', str(reports), '--out', str(tmp_path / 'l')]) == 2
  assert f'{reports}:2: missing text' in capsys.readouterr().err
  reports.write_text('{"id": 1, "text": "ok"}\n{"id": 1, "text": "again"}\n')
  assert cli.main(['label', '--reports', str(reports), '--out', str(tmp_path / 'l')]) == 2
  assert 'duplicate id 1 (rows 1 and 2)' in capsys.readouterr().err
  assert not (tmp_path / 'l').exists()  # nothing written


def test_mesh_agreement_on_held_out_odd_ids():
  from tools.mesh_agreement import agreement, mesh_observations
  assert mesh_observations(['Cardiac Shadow/enlarged/mild', 'Cardiac Shadow/borderline',
                            'Thickening/pleura/apex', 'normal']) == {'Cardiomegaly',
                                                                     'Pleural Other'}
  result = agreement('odd')
  assert result['reports'] > 1900
  assert result['micro_f1'] >= 0.90, result
  assert result['min_f1'] >= 0.75, result


def test_cli_score_counts_empty_generations(tmp_path):
  pytest.importorskip('pycocoevalcap')
  preds = tmp_path / 'p.jsonl'
  preds.write_text(
    json.dumps({'id': 1, 'generated': 'Mild cardiomegaly. No effusion.',
                'reference': 'Mild cardiomegaly, no pleural effusion.'}) + '\n'
    + json.dumps({'id': 2, 'generated': '', 'reference': 'The lungs are clear.'}) + '\n')
  out = tmp_path / 'm.json'
  assert cli.main(['score', '--predictions', str(preds), '--out', str(out), '--no-meteor']) == 0
  metrics = json.loads(out.read_text())
  assert metrics['num_empty_generations'] == 1
  assert metrics['clinical_f1_micro_5'] == 1.0  # both agree on Cardiomegaly only
  for key in ('BLEU-1', 'BLEU-4', 'ROUGE-L', 'CIDEr'):
    assert 0.0 <= metrics[key] and isinstance(metrics[key], float)
  assert 0.0 < metrics['BLEU-1'] <= 1.0
