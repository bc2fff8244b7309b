"""MS-CXR and PadChest-GR builders on fixtures in their release formats, with planted
bad records.

MS-CXR: the header of MS_CXR_Local_Alignment_v1.1.0.csv as PhysioNet publishes it (dicom_id,
category_name, label_text, path, x, y, w, h, image_width, image_height, split), paths into
MIMIC-CXR-JPG's files/ tree. PadChest-GR: the BIMCV release's file and field names."""
import csv
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from data_prep import checks
from data_prep.builder import ManualDirError, Reject
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


def test_ms_cxr_takes_mimics_split_as_radvlm(tmp_path):
  """RadVLM's MS_CXR is a MIMIC-CXR subset: with v1.0.0 (no split column) and MIMIC's
  split CSV beside it, MIMIC's split decides (v1.0.0 alone put every image in test, so the
  recipe's training component had no train split); two splits for one image is a reject."""
  src = str(tmp_path / 'src')
  ids = ['a1', 'b2', 'c3', 'd4']
  path = 'files/p10/p10000032/s50414267/{}.jpg'
  rows = [[i, 'Cardiomegaly', 'big heart', path.format(i), 10, 20, 30, 15, 64, 48]
          for i in ids]
  for r in rows:
    fx.write_file(os.path.join(src, r[3]), fx.image_bytes(size=(64, 48)))
  fx.write_csv(os.path.join(src, 'MS_CXR_Local_Alignment_v1.0.0.csv'), MS_HEADER[:-1], rows)
  fx.write_csv(os.path.join(src, 'mimic-cxr-2.0.0-split.csv'),
               ['dicom_id', 'study_id', 'subject_id', 'split'],
               [['a1', 1, 2, 'train'], ['b2', 1, 2, 'validate'], ['c3', 1, 2, 'test']])
  out, _ = fx.build('ms_cxr', src, str(tmp_path / 'out'))
  assert [[e['id'] for e in fx.examples(out, s)] for s in ('train', 'val', 'test')] == [
      ['a1'], ['b2'], ['c3']]
  assert 'd4 is not in mimic-cxr-2.0.0-split.csv' in fx.rejects(out)['d4']['reason']


def padchest_png16(seed: int) -> bytes:
  """A 16-bit grayscale PNG, as PadChest ships its images."""
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 4096, (32, 40), dtype=np.uint16)).save(buf, format='PNG')
  return buf.getvalue()


def write_padchest_gr(src: str, images_dir: str = 'Padchest_GR_files/PadChest_GR',
                      conflict: bool = False) -> list[str]:
  """The BIMCV release: the grounded-report JSON (fields as published: StudyID, ImageID,
  findings with sentence_en/es, abnormal, boxes, extra_boxes, labels, locations,
  progression; absent findings without boxes/labels/locations), master_table.csv zipped
  with one row per (study, label), and the PNGs extracted from PadChest_GR.zip.*."""
  ids = [f'21639{i}6094306186545{i}_00-115-183.png' for i in range(5)]

  def finding(en, es, boxes=None, labels=None, extra=None):
    f = {'sentence_en': en, 'sentence_es': es, 'abnormal': boxes is not None,
         'progression': None}
    if boxes is not None:  # present finding: the keys absent findings often lack
      f.update(boxes=boxes, extra_boxes=extra or [], labels=labels, locations=['cardiac'])
    return f

  reports = [
    {'StudyID': 'st0', 'ImageID': ids[0], 'findings': [
      finding('Cardiomegaly.', 'Cardiomegalia.', [[0.3, 0.4, 0.8, 0.75]], ['cardiomegaly'],
              extra=[[0.31, 0.41, 0.79, 0.74]]),
      finding('No pleural effusion.', 'Sin derrame pleural.')]},
    {'StudyID': 'st1', 'ImageID': ids[1], 'findings': [finding(
      'Left pleural effusion and atelectasis.', 'Derrame pleural izquierdo y atelectasia.',
      [[0.6, 0.5, 0.9, 0.9], [0.55, 0.6, 0.7, 0.8]], ['pleural effusion', 'atelectasis'])]},
    {'StudyID': 'st2', 'ImageID': ids[2], 'findings': [
      finding('Nodule.', 'Nódulo.', [[120, 80, 200, 160]], ['nodule'])]},  # pixels, not [0, 1]
    {'StudyID': 'st3', 'ImageID': ids[3], 'findings': [finding('Fine.', 'Bien.')]},
    {'StudyID': 'st4', 'ImageID': ids[4], 'findings': [finding('', '')]},
  ]
  fx.write_file(os.path.join(src, 'grounded_reports_20240819.json'),
                json.dumps(reports, ensure_ascii=False).encode())
  header = ['StudyID', 'ImageID', 'PatientID', 'PatientSex_DICOM', 'label_group', 'split']
  rows = [['st0', ids[0], 'p0', 'M', 'cardiomegaly', 'train'],
          ['st0', ids[0], 'p0', 'M', 'normal', 'train'],
          ['st1', ids[1], 'p1', 'F', 'pleural effusion', 'validation'],
          ['st1', ids[1], 'p1', 'F', 'atelectasis', 'validation'],
          ['st2', ids[2], 'p2', 'F', 'nodule', 'train'],
          ['st4', ids[4], 'p4', 'M', 'normal', 'train']]  # st3: not in the table
  if conflict:  # one image's rows naming two splits
    rows.append(['st0', ids[0], 'p0', 'M', 'aortic elongation', 'test'])
  table = io.StringIO()
  csv.writer(table).writerows([header] + rows)
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, 'w') as zf:
    zf.writestr('master_table.csv', table.getvalue())
  fx.write_file(os.path.join(src, 'master_table.csv.zip'), buf.getvalue())
  for k, i in enumerate(ids):
    fx.write_file(os.path.join(src, images_dir, i), padchest_png16(k))
  return ids


def test_padchest_gr(tmp_path):
  src = str(tmp_path / 'src')
  ids = write_padchest_gr(src)
  out, manifest = fx.build('padchest_gr', src, str(tmp_path / 'out'))
  (ex,) = fx.examples(out, 'train')
  assert ex['report']['findings'] == 'Cardiomegaly. No pleural effusion.'
  # The first reader's boxes only; label = the PadChest label, phrase = the sentence.
  assert ex['boxes'] == [{'box': [0.3, 0.4, 0.8, 0.75], 'label': 'cardiomegaly',
                          'phrase': 'Cardiomegaly.'}]
  with open(os.path.join(src, 'Padchest_GR_files/PadChest_GR', ids[0]), 'rb') as f:
    assert ex['images'][0]['data'] == f.read()  # the 16-bit PNG as published
  (val,) = fx.examples(out, 'val')
  assert [b['label'] for b in val['boxes']] == ['pleural effusion, atelectasis'] * 2
  rejects = fx.rejects(out)
  assert manifest['num_rejects'] == 3
  assert 'outside [0, 1]' in rejects[ids[2]]['reason']
  assert 'not in master_table.csv.zip' in rejects[ids[3]]['reason']
  assert 'sentence_en: missing or empty' in rejects[ids[4]]['reason']


def test_padchest_gr_rows_that_disagree_on_a_split_reject_the_image(tmp_path):
  # The last row's split used to win, silently.
  src = str(tmp_path / 'src')
  ids = write_padchest_gr(src, conflict=True)
  out, manifest = fx.build('padchest_gr', src, str(tmp_path / 'out'))
  assert manifest['counts'] == {'train': 0, 'val': 1}
  assert "split 'test', where an earlier row has 'train'" in fx.rejects(out)[ids[0]]['reason']


@pytest.mark.parametrize('images_dir', ['PadChest_GR', 'Padchest_GR_files', 'images_grounding'])
def test_padchest_gr_image_folders(tmp_path, images_dir):
  src = str(tmp_path / 'src')
  write_padchest_gr(src, images_dir)
  _, manifest = fx.build('padchest_gr', src, str(tmp_path / 'out'))
  assert manifest['counts'] == {'train': 1, 'val': 1}


def test_padchest_gr_without_images_names_the_folders(tmp_path):
  src = str(tmp_path / 'src')
  write_padchest_gr(src, 'elsewhere')
  with pytest.raises(ManualDirError, match='PadChest_GR/ or Padchest_GR_files/PadChest_GR/'):
    fx.build('padchest_gr', src, str(tmp_path / 'out'))


def test_pixel_box_rejects_empty_boxes_and_allows_a_pixel_of_slack():
  for empty in ((10, 5, 10, 20), (10, 5, 20, 5)):
    with pytest.raises(Reject, match='empty box'):
      checks.pixel_box(*empty, (64, 48), 'w')
  assert checks.pixel_box(-0.5, -1, 64.5, 49, (64, 48), 'w') == [0, 0, 1, 1]
  with pytest.raises(Reject, match='outside the 64x48 image'):
    checks.pixel_box(-1.5, 0, 10, 10, (64, 48), 'w')


def test_ms_cxr_an_image_whose_rows_name_two_splits_is_rejected(tmp_path):
  from tests.test_data_prep_grounding import MS_HEADER
  src = str(tmp_path / 'src')
  path = 'files/p10/p10000032/s50414267/{}.jpg'
  rows = [['a1', 'Cardiomegaly', 'big heart', path.format('a1'), 10, 20, 30, 15, 64, 48, 'train'],
          ['a1', 'Edema', 'edema', path.format('a1'), 5, 5, 10, 10, 64, 48, 'test'],
          ['b2', 'Edema', 'edema', path.format('b2'), 5, 5, 10, 10, 64, 48, 'train']]
  for r in rows:
    fx.write_file(os.path.join(src, r[3]), fx.image_bytes(size=(64, 48)))
  fx.write_csv(os.path.join(src, 'MS_CXR_Local_Alignment_v1.1.0.csv'), MS_HEADER, rows)
  out, _ = fx.build('ms_cxr', src, str(tmp_path / 'out'))
  assert [e['id'] for e in fx.examples(out, 'train')] == ['b2']
  assert "split 'test', where row 2 said otherwise" in fx.rejects(out)['a1']['reason']
