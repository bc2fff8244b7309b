"""CheXpert-Plus builder on a fixture in the publisher's layout with planted bad records."""
import json
import os

from tests import data_prep_fixtures as fx

HEADER = ['path_to_image', 'path_to_dcm', 'frontal_lateral', 'ap_pa', 'deid_patient_id',
          'patient_report_date_order', 'report', 'section_narrative', 'section_clinical_history',
          'section_history', 'section_comparison', 'section_technique',
          'section_procedure_comments', 'section_findings', 'section_impression',
          'section_end_of_impression', 'section_summary', 'section_accession_number', 'age',
          'sex', 'race', 'ethnicity', 'interpreter_needed', 'insurance_type', 'recent_bmi',
          'deceased', 'split']


def row(path, view, findings, impression, split='train'):
  r = dict.fromkeys(HEADER, '')
  r.update(path_to_image=path, path_to_dcm=path.replace('.jpg', '.dcm'), frontal_lateral=view,
           section_findings=findings, section_impression=impression, split=split)
  return [r[h] for h in HEADER]


def test_chexpert_plus(tmp_path):
  src = str(tmp_path / 'src')
  p = 'train/patient{:05d}/study1/view{}_{}.jpg'
  rows = [row(p.format(1, 1, 'frontal'), 'Frontal', 'Lungs are clear.', '1. No acute process.'),
          row(p.format(1, 2, 'lateral'), 'Lateral', 'Lungs are clear.', '1. No acute process.'),
          row(p.format(2, 1, 'frontal'), 'Frontal', '', '', 'train'),
          row(p.format(3, 1, 'frontal'), 'Frontal', 'Effusion.', 'Small effusion.', 'valid'),
          row(p.format(4, 1, 'frontal'), 'Frontal', 'x', 'y', 'holdout')]
  fx.write_csv(os.path.join(src, 'df_chexpert_plus_240401.csv'), HEADER, rows)
  for i, r in enumerate(rows):
    fx.write_file(os.path.join(src, 'PNG', r[0].replace('.jpg', '.png')),
                  fx.image_bytes(fmt='PNG', seed=i))
  labels = [{'path_to_image': rows[0][0], 'No Finding': 1.0, 'Edema': None},
            {'path_to_image': rows[3][0], 'Pleural Effusion': 1.0, 'Edema': -1.0}]
  fx.write_file(os.path.join(src, 'chexbert_labels/report_fixed.json'),
                '\n'.join(json.dumps(x) for x in labels).encode())
  path, manifest = fx.build('chexpert_plus', src, str(tmp_path / 'out'))
  train = fx.examples(path, 'train')
  assert [e['id'] for e in train] == [rows[0][0][:-4], rows[1][0][:-4]]
  assert train[0]['report'] == {'findings': 'Lungs are clear.',
                                'impression': '1. No acute process.'}
  assert train[0]['labels'] == {'No Finding': 1} and train[1]['labels'] == {}
  (val,) = fx.examples(path, 'val')
  assert val['labels'] == {'Pleural Effusion': 1, 'Edema': -1}
  rejects = fx.rejects(path)
  assert 'findings and impression both empty' in rejects[rows[2][0][:-4]]['reason']
  assert "split: unknown value 'holdout'" in rejects[rows[4][0][:-4]]['reason']
  frontal, m2 = fx.build('chexpert_plus', src, str(tmp_path / 'out'), config='frontal')
  assert [e['id'] for e in fx.examples(frontal, 'train')] == [rows[0][0][:-4]]
  assert m2['filtered_by_view'] == {'train': 1, 'val': 0} and m2['views'] == ['Frontal']
  assert m2['num_rejects'] == manifest['num_rejects'] == 2  # the lateral is no reject


def test_chexpert_plus_end_of_impression_joins_the_impression(tmp_path):
  src = str(tmp_path / 'src')
  r = row('train/patient00001/study1/view1_frontal.jpg', 'Frontal', 'Clear.', '1. Normal.')
  r[HEADER.index('section_end_of_impression')] = 'Signed by Dr X.'
  fx.write_csv(os.path.join(src, 'df_chexpert_plus_240401.csv'), HEADER, [r])
  fx.write_file(os.path.join(src, 'PNG', r[0].replace('.jpg', '.png')), fx.image_bytes(fmt='PNG'))
  path, _ = fx.build('chexpert_plus', src, str(tmp_path / 'out'))
  (ex,) = fx.examples(path, 'train')
  assert ex['report']['impression'] == '1. Normal. Signed by Dr X.'


def test_a_dotted_path_is_a_duplicate_and_a_path_outside_the_folder_is_rejected(tmp_path):
  src = str(tmp_path / 'src')
  good = row('train/patient00001/study1/view1_frontal.jpg', 'Frontal', 'Clear.', 'Normal.')
  dotted = row('train/patient00001/../patient00001/./study1/view1_frontal.jpg', 'Frontal',
               'Clear.', 'Normal.')
  outside = row('train/../../elsewhere/view1_frontal.jpg', 'Frontal', 'Clear.', 'Normal.')
  fx.write_csv(os.path.join(src, 'df_chexpert_plus_240401.csv'), HEADER, [good, dotted, outside])
  fx.write_file(os.path.join(src, 'PNG', good[0].replace('.jpg', '.png')),
                fx.image_bytes(fmt='PNG'))
  fx.write_file(str(tmp_path / 'elsewhere/view1_frontal.png'), fx.image_bytes(fmt='PNG', seed=1))
  fx.write_file(os.path.join(src, 'chexbert_labels/report_fixed.json'),
                json.dumps({'path_to_image': './' + good[0], 'Edema': 1.0}).encode())
  path, manifest = fx.build('chexpert_plus', src, str(tmp_path / 'out'))
  (ex,) = fx.examples(path, 'train')
  assert ex['id'] == good[0][:-4] and ex['labels'] == {'Edema': 1}
  got = {r['row']: (rid, r['reason']) for rid, r in fx.rejects(path).items()}
  assert got[3][0] == good[0][:-4] and 'duplicate' in got[3][1]
  assert got[4][1] == f"path_to_image: {outside[0]!r} is not below the dataset's folder"
  assert manifest['num_rejects'] == 2
