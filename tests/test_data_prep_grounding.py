"""MS-CXR and PadChest-GR builders on fixtures in their release formats, with planted
bad records."""
import json
import os

import numpy as np

from tests import data_prep_fixtures as fx

MS_HEADER = ['dicom_id', 'category_name', 'label_text', 'path', 'x', 'y', 'w', 'h',
             'image_width', 'image_height', 'split']


def test_ms_cxr(tmp_path):
  src = str(tmp_path / 'src')
  d = ['1a5ba7e1-2b5b9c8d-0f2a8b4e-3c6f5d1e-9a8b7c6d',
       '2b6cb8f2-3c6cad9e-1f3b9c5f-4d7f6e2f-0b9c8d7e',
       '3c7dc903-4d7dbe0f-204cad60-5e807f30-1cad9e8f',
       '4d8ed014-5e8ecf10-315dbe71-6f918041-2dbeaf90']
  path = 'files/p10/p10000032/s50414267/{}.jpg'
  rows = [
    [d[0], 'Cardiomegaly', 'enlarged cardiac silhouette', path.format(d[0]), 10, 20, 30, 15,
     64, 48, 'train'],
    [d[0], 'Pleural Effusion', 'small left effusion', path.format(d[0]), 40, 30, 20, 15, 64, 48,
     'train'],
    [d[1], 'Pneumonia', 'right lower lobe pneumonia', path.format(d[1]), 5, 5, 10, 10, 64, 48,
     'test'],
    [d[2], 'Nodule', 'a nodule', path.format(d[2]), 5, 5, 10, 10, 64, 48, 'test'],
    [d[3], 'Edema', 'edema', path.format(d[3]), 50, 5, 30, 10, 64, 48, 'test'],
  ]
  for r in rows:
    fx.write_file(os.path.join(src, r[3]), fx.image_bytes(size=(64, 48)))
  fx.write_csv(os.path.join(src, 'MS_CXR_Local_Alignment_v1.1.0.csv'), MS_HEADER, rows)
  out, manifest = fx.build('ms_cxr', src, str(tmp_path / 'out'))
  (ex,) = fx.examples(out, 'train')
  assert ex['id'] == d[0] and ex['labels'] == {'Cardiomegaly': 1, 'Pleural Effusion': 1}
  np.testing.assert_allclose(ex['boxes'][0]['box'], [10 / 64, 20 / 48, 40 / 64, 35 / 48])
  assert ex['boxes'][1]['phrase'] == 'small left effusion'
  assert [e['id'] for e in fx.examples(out, 'test')] == [d[1]]
  rejects = fx.rejects(out)
  assert "category_name 'Nodule' is not an observation" in rejects[d[2]]['reason']
  assert 'outside the 64x48 image' in rejects[d[3]]['reason'] and rejects[d[3]]['row'] == 6


def test_padchest_gr(tmp_path):
  src = str(tmp_path / 'src')
  ids = [f'21639{i}6094306186545{i}_00-115-183.png' for i in range(5)]
  reports = [
    {'ImageID': ids[0], 'findings': [
      {'sentence_en': 'Cardiomegaly.', 'boxes': [[0.3, 0.4, 0.8, 0.75]],
       'labels': ['cardiomegaly']},
      {'sentence_en': 'Aortic elongation.', 'boxes': [], 'labels': ['aortic elongation']}]},
    {'ImageID': ids[1], 'findings': [{'sentence_en': 'Left pleural effusion.',
                                      'boxes': [[0.6, 0.5, 0.9, 0.9], [0.55, 0.6, 0.7, 0.8]]}]},
    {'ImageID': ids[2], 'findings': [{'sentence_en': 'Nodule.', 'boxes': [[120, 80, 200, 160]]}]},
    {'ImageID': ids[3], 'findings': [{'sentence_en': 'Fine.', 'boxes': []}]},
    {'ImageID': ids[4], 'findings': [{'sentence_en': '', 'boxes': []}]},
  ]
  fx.write_file(os.path.join(src, 'grounded_reports_20240819.json'), json.dumps(reports).encode())
  fx.write_csv(os.path.join(src, 'master_table.csv'), ['ImageID', 'PatientSex_DICOM', 'split'],
               [[ids[0], 'M', 'train'], [ids[1], 'F', 'validation'], [ids[2], 'F', 'train'],
                [ids[4], 'M', 'train']])
  for i in ids:
    fx.write_file(os.path.join(src, 'images_grounding', i), fx.image_bytes(fmt='PNG'))
  out, manifest = fx.build('padchest_gr', src, str(tmp_path / 'out'))
  (ex,) = fx.examples(out, 'train')
  assert ex['report']['findings'] == 'Cardiomegaly. Aortic elongation.'
  assert ex['boxes'] == [{'box': [0.3, 0.4, 0.8, 0.75], 'label': 'Cardiomegaly.',
                          'phrase': 'Cardiomegaly.'}]
  (val,) = fx.examples(out, 'val')
  assert len(val['boxes']) == 2
  rejects = fx.rejects(out)
  assert 'outside [0, 1]' in rejects[ids[2]]['reason']
  assert 'not in master_table.csv' in rejects[ids[3]]['reason']
  assert 'sentence_en: missing or empty' in rejects[ids[4]]['reason']
