"""The embedded 3D dataset (data_prep/demo_ct): builds, every record valid, labels agree
with the reports and the volumes, 3D boxes on nodules, terms.txt, and the 2D demo's
terms.txt."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from configs import common
from data_prep import demo, demo_ct, terms
from radjax.data import schema
from radjax.eval.metrics import labeler
from tests import data_prep_fixtures as fx

SMALL = dict(num_train=24, num_val=6, num_test=6, min_slices=8, max_slices=20)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('demo_ct') / 'data')
  return out, demo_ct.build(out, **SMALL)


def _volume(example: dict) -> np.ndarray:
  return np.load(io.BytesIO(example['images'][0]['data']), allow_pickle=False)


def test_builds_valid_records_with_3d_volumes(built):
  out, manifest = built
  assert manifest['counts'] == {'train': 24, 'val': 6, 'test': 6}
  assert manifest['num_rejects'] == 0
  assert manifest['build_seconds'] < 30
  depths = set()
  for split in ('train', 'val', 'test'):
    for example in fx.examples(out, split):
      schema.validate(example)
      assert example['split'] == split and example['source'] == 'demo_ct'
      [image] = example['images']
      assert (image['format'], image['kind']) == ('npy', '3d')
      volume = _volume(example)
      assert volume.dtype == np.float16 and volume.shape[:2] == (64, 64)
      assert 0.0 <= volume.min() and volume.max() <= 1.0
      assert len(image['spacing']) == 3
      depths.add(volume.shape[2])
  assert min(depths) >= 8 and max(depths) <= 20 and len(depths) > 3
  for name in ('tokenizer.json', 'terms.txt'):
    assert os.path.isfile(os.path.join(out, name))


def test_labels_match_reports_boxes_and_conversations(built):
  out, _ = built
  seen = set()
  for example in fx.examples(out, 'train'):
    labels = example['labels']
    report = example['report']
    read = labeler.label_report(labeler.report_text(report['findings'], report['impression']))
    assert {k for k, v in read.items() if v == 1} == {k for k, v in labels.items() if v == 1}
    assert labels['No Finding'] == int(not any(
      labels[o] for o in ('Lung Lesion', 'Pleural Effusion', 'Cardiomegaly')))
    # One 6-number box per nodule, labelled as its observation.
    assert len(example['boxes']) == (report['findings'].count(' mm ')
                                     if labels['Lung Lesion'] else 0)
    volume = _volume(example).astype(np.float32)
    for box in example['boxes']:
      assert len(box['box']) == 6 and box['label'] == 'Lung Lesion'
      x1, y1, z1, x2, y2, z2 = box['box']
      rows, cols, slices = volume.shape
      patch = volume[int(y1 * rows):int(np.ceil(y2 * rows)), int(x1 * cols):int(np.ceil(x2 * cols)),
                     int(z1 * slices):int(np.ceil(z2 * slices))]
      assert patch.max() > 0.5  # soft tissue in the lung window, where the box says
    assert example['conversation'][0]['role'] == 'user'
    for turn in example['conversation'][1::2]:
      assert turn['text'].startswith(('Yes', 'No'))
    seen |= {k for k, v in labels.items() if v == 1}
  assert seen == {'No Finding', 'Lung Lesion', 'Pleural Effusion', 'Cardiomegaly'}


def test_records_are_a_function_of_seed_split_index(built):
  out, _ = built
  first = fx.examples(out, 'val')[2]
  again = demo_ct.make_example('val', 2, seed=0, min_slices=8, max_slices=20)
  assert schema.encode(again) == schema.encode(first)
  other = demo_ct.make_example('val', 2, seed=1, min_slices=8, max_slices=20)
  assert schema.encode(other) != schema.encode(first)


def test_terms_file_lists_terms_its_text_uses(built):
  out, _ = built
  listed = terms.read_terms(os.path.join(out, terms.FILENAME))
  assert {'Pleural Effusion', 'Cardiomegaly', 'Nodule'} <= set(listed)
  assert set(listed) <= set(demo_ct.MESH_TERMS)
  text = ' '.join(e['report']['findings'] + ' ' + e['report']['impression']
                  for s in ('train', 'val', 'test') for e in fx.examples(out, s)).lower()
  for term in listed:
    assert term.lower() in text


def test_ensure_built_reuses_and_bad_arguments_fail(built, tmp_path):
  out, manifest = built
  assert demo_ct.ensure_built(out, **SMALL)['counts'] == manifest['counts']
  with pytest.raises(TypeError, match='unknown arguments'):
    demo_ct.build(str(tmp_path / 'x'), num_slices=3)
  with pytest.raises(ValueError, match='min_slices'):
    demo_ct.build(str(tmp_path / 'x'), min_slices=30, max_slices=20)
  with pytest.raises(ValueError, match='demo_ct: num_val=0: every split needs at least 1'):
    demo_ct.build(str(tmp_path / 'x'), num_val=0)
  assert not os.path.exists(tmp_path / 'x')
  assert common.DEMO_CT_DIR != common.DEMO_DIR


@pytest.mark.parametrize('main,args,message', [
  (demo.main, ['--num_test', '-1'], 'demo: num_test=-1: every split needs at least 1 record'),
  (demo_ct.main, ['--num_val', '0'], 'demo_ct: num_val=0: every split needs at least 1'),
  (demo_ct.main, ['--rows', '8'], 'demo_ct: rows=8: must be at least 16'),
  (demo_ct.main, ['--window', 'foo'], "demo_ct: window='foo': known windows are bone,"),
  (demo_ct.main, ['--foreign'], 'exists and is not a radjax dataset'),
])
def test_clis_fail_up_front_in_one_line(main, args, message, tmp_path, capsys, monkeypatch):
  # Checked before rendering anything (a renderer that is called fails the test); the
  # error is one 'error:' line and exit code 2, never a traceback.
  monkeypatch.setattr(demo_ct, 'make_example', lambda *a, **k: pytest.fail('rendered'))
  monkeypatch.setattr(demo, 'make_demo_example', lambda *a, **k: pytest.fail('rendered'))
  out = tmp_path / 'out'
  if args == ['--foreign']:
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    args = []
  with pytest.raises(SystemExit) as e:
    main(['--out', str(out), *args])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith('error: ') and message in err
  assert len(err.strip().splitlines()) == 1
  assert not out.exists() or os.listdir(out) == ['notes.txt']  # nothing written


def test_term_counter_whole_words_plural_case():
  counter = terms.TermCounter(['Mass', 'Pleural Effusion', 'Nodule'])
  counter.add('A massive heart.')
  counter.add('Small bilateral pleural\neffusions.')
  assert counter.occurring() == ['Pleural Effusion']
  counter.add('Two NODULES.')
  assert counter.file_text() == 'Pleural Effusion\nNodule\n'


def test_2d_demo_writes_terms_its_reports_use(tmp_path):
  out = str(tmp_path / 'demo')
  demo.build(out, seed=0, num_train=30, num_val=4, num_test=4, num_workers=1)
  listed = terms.read_terms(os.path.join(out, terms.FILENAME))
  text = ' '.join(' '.join([e['report']['findings'], e['report']['impression']]
                           + [t['text'] for t in e['conversation']])
                  for s in ('train', 'val', 'test') for e in fx.examples(out, s)).lower()
  assert 'Pleural Effusion' in listed and 'Cardiomegaly' in listed
  for term in listed:
    assert term.lower() in text
  assert 'Hemopneumothorax' not in listed  # mapped by OpenI, never in the demo's sentences


def test_terms_cli_builds_a_file_from_mesh_xml(built, tmp_path):
  out, _ = built
  xml = tmp_path / 'desc.xml'
  xml.write_text('<DescriptorRecordSet>' + ''.join(
      f'<DescriptorRecord><DescriptorName><String>{n}</String></DescriptorName>'
      '</DescriptorRecord>' for n in ('Pleural Effusion', 'Nodule', 'Pneumoperitoneum'))
      + '</DescriptorRecordSet>')
  dest = tmp_path / 'terms.txt'
  assert terms.main(['--vocabulary', str(xml), '--data_dir', out, '--out', str(dest)]) == 0
  assert dest.read_text() == 'Pleural Effusion\nNodule\n'  # never-used headings left out
  assert terms.main(['--vocabulary', str(tmp_path / 'none.xml'), '--data_dir', out,
                     '--out', str(dest)]) == 2
