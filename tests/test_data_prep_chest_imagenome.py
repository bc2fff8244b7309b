"""The chest_imagenome builder on a fixture in Chest ImaGenome 1.0.0's own layout, with
planted bad records, and anatomical_grounding served from what it writes.

The fixture is PhysioNet's: silver_dataset/splits/{train,valid,test}.csv with their header
(an unnamed index column, subject_id, study_id, dicom_id, path, ViewPosition), one
silver_dataset/scene_graph/<dicom_id>_SceneGraph.json per image with the release's keys
(image_id, viewpoint, objects with bbox_name, name, synsets, the 224-px x1..y2 / width /
height and the original_* coordinates, attributes, relationships), MIMIC-CXR-JPG's
files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg and mimic-cxr-2.0.0-split.csv.gz beside them."""
import csv
import gzip
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_prep import __main__ as cli
from data_prep.builder import ManualDirError
from radjax.data import instructions
from tests import data_prep_fixtures as fx

SPLIT_HEADER = ['', 'subject_id', 'study_id', 'dicom_id', 'path', 'ViewPosition']
W, H = 64, 48  # the films' size: boxes are divided by it


def _dicom(k: int) -> str:
  return f'{k:08x}-1b2c3d4e-5f607182-93a4b5c6-d7e8f90{k % 10}'


def _object(dicom_id, region, x1, y1, x2, y2):
  """A scene-graph object as the silver release writes it: 224-px box (on the padded,
  resampled square) and the same box in the film's own pixels."""
  scale = 224 / max(W, H)
  small = [round(v * scale) for v in (x1, y1, x2, y2)]
  return {'object_id': f'{dicom_id}_{region}', 'x1': small[0], 'y1': small[1],
          'x2': small[2], 'y2': small[3], 'width': small[2] - small[0],
          'height': small[3] - small[1], 'bbox_name': region, 'synsets': ['C0225706'],
          'name': region.capitalize(), 'original_x1': x1, 'original_y1': y1,
          'original_x2': x2, 'original_y2': y2, 'original_width': x2 - x1,
          'original_height': y2 - y1}


def _scene_graph(dicom_id, objects) -> bytes:
  return json.dumps({
      'image_id': dicom_id, 'viewpoint': 'PA', 'patient_id': 10000032, 'study_id': 50414267,
      'gender': 'F', 'age_decile': '50-60', 'reason_for_exam': 'Dyspnea.', 'StudyOrder': 1,
      'StudyDateTime': '2180-05-06 21:38:51 UTC', 'objects': objects,
      'attributes': [{'bbox_name': objects[0]['bbox_name'] if objects else 'right lung',
                      'synsets': ['C0225706'], 'name': 'Right lung',
                      'attributes': [['anatomicalfinding|no|lung opacity']],
                      'attributes_ids': [['CL556823']], 'phrases': ['Lungs are clear.'],
                      'phrase_IDs': ['50414267|4'], 'sections': ['finalreport'],
                      'comparison_cues': [[]], 'temporal_cues': [[]],
                      'severity_cues': [[]], 'texture_cues': [[]], 'object_id': 'x'}],
      'relationships': []}).encode()


def write_chest_imagenome(src: str) -> dict:
  """The release with MIMIC-CXR-JPG beside it; returns {name: dicom_id}."""
  ids = {name: _dicom(k) for k, name in enumerate(
      ['good', 'second', 'mimic_test', 'not_in_mimic', 'corrupt_graph', 'no_graph',
       'no_image', 'flat_box', 'val', 'test'])}
  subject, study = '10000032', '50414267'
  rows = {'train': [], 'valid': [], 'test': []}
  mimic = []
  for name, d in ids.items():
    split = {'val': 'valid', 'test': 'test'}.get(name, 'train')
    path = f'files/p10/p{subject}/s{study}/{d}'
    rows[split].append([len(rows[split]), subject, study, d, f'{path}.dcm', 'PA'])
    if name != 'not_in_mimic':
      mimic.append([d, study, subject, 'test' if name == 'mimic_test' else 'train'])
    if name != 'no_image':
      fx.write_file(os.path.join(src, f'{path}.jpg'), fx.image_bytes(size=(W, H), seed=len(mimic)))
    objects = [_object(d, 'right lung', 8, 6, 40, 30),  # [0.125, 0.125, 0.625, 0.625]
               _object(d, 'left costophrenic angle', 50, 36, 70, 52),  # overhangs: clipped
               _object(d, 'svc', 30, 4, 34, 20)]
    if name == 'second':
      objects = objects[:1]
    if name == 'flat_box':
      objects[2] = _object(d, 'svc', 30, 4, 30, 20)
    graph = os.path.join(src, 'silver_dataset', 'scene_graph', f'{d}_SceneGraph.json')
    if name == 'corrupt_graph':
      fx.write_file(graph, _scene_graph(d, objects)[:200])  # cut off mid-write
    elif name != 'no_graph':
      fx.write_file(graph, _scene_graph(d, objects))
  for split, split_rows in rows.items():
    fx.write_csv(os.path.join(src, 'silver_dataset', 'splits', f'{split}.csv'), SPLIT_HEADER,
                 split_rows)
  fx.write_csv(os.path.join(src, 'silver_dataset', 'splits', 'images_to_avoid.csv'),
               SPLIT_HEADER[1:], [])
  text = io.StringIO()
  csv.writer(text).writerows([['dicom_id', 'study_id', 'subject_id', 'split']] + mimic)
  fx.write_file(os.path.join(src, 'mimic-cxr-2.0.0-split.csv.gz'),
                gzip.compress(text.getvalue().encode()))
  return ids


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('chest_imagenome')
  ids = write_chest_imagenome(str(root / 'src'))
  out, manifest = fx.build('chest_imagenome', str(root / 'src'), str(root / 'out'))
  return ids, out, manifest


def test_boxes_are_the_original_coordinates_over_the_film_size(built):
  ids, out, manifest = built
  train = {e['id']: e for e in fx.examples(out, 'train')}
  assert sorted(train) == sorted([ids['good'], ids['second']])
  good = train[ids['good']]
  assert good['source'] == 'chest-imagenome' and good['labels'] == {}
  assert good['images'][0]['format'] == 'jpeg'
  assert [b['label'] for b in good['boxes']] == ['right lung', 'left costophrenic angle', 'svc']
  assert all(b['phrase'] == '' for b in good['boxes'])
  # right lung: original (8, 6)-(40, 30) on the 64 x 48 film (not the 224-px x1..y2).
  np.testing.assert_allclose(good['boxes'][0]['box'], [0.125, 0.125, 0.625, 0.625])
  # (50, 36)-(70, 52) overhangs the film's right and bottom edges: clipped to them.
  np.testing.assert_allclose(good['boxes'][1]['box'], [50 / 64, 36 / 48, 1.0, 1.0])
  np.testing.assert_allclose(good['boxes'][2]['box'], [30 / 64, 4 / 48, 34 / 64, 20 / 48])
  assert [b['label'] for b in train[ids['second']]['boxes']] == ['right lung']
  assert manifest['counts'] == {'train': 2, 'val': 1, 'test': 1}


def test_splits_are_the_silver_splits_and_train_leaves_out_mimic_test(built):
  ids, out, manifest = built
  assert [e['id'] for e in fx.examples(out, 'val')] == [ids['val']]
  assert [e['id'] for e in fx.examples(out, 'test')] == [ids['test']]
  # MIMIC-CXR's own split puts this film in test: out of training, counted, not rejected.
  assert manifest['filtered_by_mimic_split'] == {'test': 1}
  assert ids['mimic_test'] not in fx.rejects(out)


def test_bad_records_are_rejected_naming_the_file(built):
  ids, out, manifest = built
  rejects = fx.rejects(out)
  graph = 'silver_dataset/scene_graph/{}_SceneGraph.json'
  assert set(rejects) == {ids[n] for n in ('not_in_mimic', 'corrupt_graph', 'no_graph',
                                           'no_image', 'flat_box')}
  assert manifest['num_rejects'] == 5
  assert all(r['file'] == 'silver_dataset/splits/train.csv' for r in rejects.values())
  assert rejects[ids['corrupt_graph']]['row'] == 6  # header, then one line per image
  assert rejects[ids['corrupt_graph']]['reason'].startswith(
      graph.format(ids['corrupt_graph']) + ': not a JSON scene graph')
  assert rejects[ids['no_graph']]['reason'] == (
      graph.format(ids['no_graph']) + ': scene graph file missing')
  assert rejects[ids['no_image']]['reason'] == (
      f"files/p10/p10000032/s50414267/{ids['no_image']}.jpg: image file missing")
  assert rejects[ids['flat_box']]['reason'] == (
      graph.format(ids['flat_box']) + ' objects[2] (svc): box [30.0, 4.0, 30.0, 20.0] has '
      'no area inside the 64x48 image')
  assert rejects[ids['not_in_mimic']]['reason'] == (
      f"{ids['not_in_mimic']}: no row in mimic-cxr-2.0.0-split.csv.gz")


def test_anatomical_grounding_serves_a_built_record(built):
  ids, out, _ = built
  good = next(e for e in fx.examples(out, 'train') if e['id'] == ids['good'])
  opts = instructions.Options()
  turns = instructions.anatomical_grounding(good, None, opts)
  assert turns[0]['role'] == 'user' and 'right lung' in turns[0]['text']
  assert turns[1]['text'] == 'The right lung is at [0.12, 0.12, 0.62, 0.62].'
  rng = np.random.default_rng(0)
  regions = [b['label'] for b in good['boxes']]
  asked = set()
  for _ in range(40):
    question = instructions.anatomical_grounding(good, rng, opts)[0]['text']
    asked |= {r for r in regions if r in question}
  assert asked == set(regions)  # one region per instruction, any of them
  # Regions are anatomy, not findings: the finding and phrase tasks have nothing to serve.
  for task in (instructions.abnormality_grounding, instructions.detection,
               instructions.phrase_grounding):
    assert task(good, None, opts) is None


@pytest.mark.parametrize('remove, expected', [
    ('silver_dataset/scene_graph', 'silver_dataset/scene_graph/ in it (silver_dataset/'
     'scene_graph.zip is there: extract it'),
    ('silver_dataset/splits', 'silver_dataset/splits/train.csv or'),
    ('mimic-cxr-2.0.0-split.csv.gz', 'expected mimic-cxr-2.0.0-split.csv.gz or'),
])
def test_a_folder_that_is_not_the_release_names_what_it_lacks(tmp_path, remove, expected):
  src = tmp_path / 'src'
  write_chest_imagenome(str(src))
  target = src / remove
  if target.is_dir():
    for f in target.iterdir():
      f.unlink()
    target.rmdir()
  else:
    target.unlink()
  if remove == 'silver_dataset/scene_graph':
    fx.write_file(str(src / 'silver_dataset' / 'scene_graph.zip'), b'PK')
  with pytest.raises(ManualDirError, match=expected.replace('(', r'\(').replace('.', r'\.')):
    fx.build('chest_imagenome', str(src), str(tmp_path / 'out'))


def test_cli_builds_it(built, tmp_path, capsys):
  ids, out, _ = built
  src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(out))), 'src')
  assert cli.main(['build', 'chest_imagenome', '--manual_dir', src, '--data_dir',
                   str(tmp_path), '--max_short_side', '24']) == 0
  out = capsys.readouterr().out  # TFDS's progress line, then the summary
  summary = json.loads(out[out.index('{\n  "dataset_dir"'):])
  assert summary['counts'] == {'train': 2, 'val': 1, 'test': 1}
  small = next(e for e in fx.examples(summary['dataset_dir'], 'train') if e['id'] == ids['good'])
  assert Image.open(io.BytesIO(small['images'][0]['data'])).size == (32, 24)
  np.testing.assert_allclose(small['boxes'][0]['box'], [0.125, 0.125, 0.625, 0.625])


def test_a_capped_mixture_component_serves_the_build(built):
  """The build as RadVLM's recipe reads it: a mixture component with tasks
  ('anatomical_grounding',) and max_records=1 asks about one fixed image's regions."""
  from radjax.core import defaults
  from radjax.data import pipeline, schema

  ids, out, _ = built
  c = defaults.get_config()
  c.train.batch_size = 4
  c.data.mixture.chest_imagenome = dict(dir=out, tasks=('anatomical_grounding',),
                                        max_records=1)

  def make_processor(tasks):
    def process(raw, rng):
      ex = schema.decode(raw)
      turns = getattr(instructions, tasks[0])(ex, rng, instructions.Options())
      return {'good': np.int32(ex['id'] == ids['good']),
              'boxed': np.int32(turns[1]['text'].count('[') == 1)}
    return process

  ds = pipeline.train_dataset(c, make_processor, 'train', 0, 1)
  batches = [ds[i] for i in range(3)]
  good = {int(g) for b in batches for g in b['good']}
  assert len(good) == 1  # one of the two train images, the same one throughout
  assert all(b['boxed'].all() for b in batches)
