"""NIH ChestX-ray14 builder on a fixture in the publisher's layout: real rows of
Data_Entry_2017_v2020.csv and BBox_List_2017.csv from the torchxrayvision wheel."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from data_prep.builder import ManualDirError
from tests import data_prep_fixtures as fx


def png(size=64, mode='L', alpha=255) -> bytes:
  ramp = np.tile(np.arange(size, dtype=np.uint8), (size, 1))
  im = Image.fromarray(ramp)
  if mode == 'RGBA':
    im = im.convert('RGBA')
    im.putalpha(alpha)
  elif mode != 'L':
    im = im.convert(mode)
  buf = io.BytesIO()
  im.save(buf, format='PNG')
  return buf.getvalue()


def write_source(root: str):
  """Writes the fixture under root; returns (rows, box_rows, bad, good): the label rows
  written, the real box rows, the planted bad label rows and the good image names."""
  header, entries = fx.txv_rows('Data_Entry_2017_v2020.csv.gz')
  box_header, box_rows = fx.txv_rows('BBox_List_2017.csv.gz', 3)
  boxed = {r[0] for r in box_rows}
  rows = entries[:8] + [r for r in entries if r[0] in boxed]
  good = [r[0] for r in rows]
  # Planted: unknown label, missing image, palette PNG, transparent RGBA, no split.
  bad = [list(entries[100 + i]) for i in range(5)]
  bad[0][1] = 'Cardiomegally'
  rows += bad
  for r in rows:
    if r[0] != bad[1][0]:
      size = 1024 if r[0] in boxed else 64
      data = png(size)
      if r[0] == bad[2][0]:
        data = png(mode='P')
      elif r[0] == bad[3][0]:
        data = png(mode='RGBA', alpha=0)
      elif r[0] == good[1]:
        data = png(mode='RGBA')  # opaque RGBA: accepted, as NIH has a few
      fx.write_file(os.path.join(root, 'images', r[0]), data)
  fx.write_csv(os.path.join(root, 'Data_Entry_2017_v2020.csv'), header, rows)
  # Planted box problems: one outside its image, one for an image with no label row.
  outside = ['00000001_000.png', 'Nodule', '1000', '10', '100', '20']
  good_outside_image = good[2]
  outside[0] = good_outside_image
  orphan = ['99999999_000.png', 'Mass', '1', '2', '3', '4']
  fx.write_csv(os.path.join(root, 'BBox_List_2017.csv'), box_header, box_rows + [outside, orphan])
  names = [r[0] for r in rows if r[0] != bad[4][0]]
  test = good[-3:]
  with open(os.path.join(root, 'train_val_list.txt'), 'w') as f:
    f.write('\n'.join(n for n in names if n not in test) + '\n')
  with open(os.path.join(root, 'test_list.txt'), 'w') as f:
    f.write('\n'.join(test) + '\n')
  return rows, box_rows, bad, good


@pytest.fixture(scope='module')
def nih(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('nih_src'))
  rows, box_rows, bad, good = write_source(root)
  path, manifest = fx.build('nih_chest_xray14', root, str(tmp_path_factory.mktemp('out')))
  return path, manifest, rows, box_rows, bad, good


def test_examples_labels_and_boxes(nih):
  path, manifest, rows, box_rows, bad, good = nih
  examples = {e['id']: e for s in ('train', 'test') for e in fx.examples(path, s)}
  expected = set(r[0][:-4] for r in rows if r not in bad) - {good[2][:-4]}
  assert set(examples) == expected
  assert sum(manifest['counts'].values()) == len(expected)
  first = examples['00000001_000']  # real row: Cardiomegaly, PA, 2682x2749, 0.143 mm
  assert first['labels']['Cardiomegaly'] == 1 and first['labels']['No Finding'] == 0
  assert first['labels']['Pleural Effusion'] == 0 and 'Emphysema' not in first['labels']
  np.testing.assert_allclose(first['images'][0]['spacing'], [0.143 * 2682 / 64, 0.143 * 2749 / 64])
  for r in box_rows:
    ex = examples[r[0][:-4]]
    x, y, w, h = map(float, r[2:6])
    (box,) = [b for b in ex['boxes'] if b['phrase'] == r[1]]
    np.testing.assert_allclose(box['box'], [x / 1024, y / 1024, (x + w) / 1024, (y + h) / 1024])
    assert box['label'] == {'Atelectasis': 'Atelectasis'}.get(r[1], box['label'])


def test_a_split_over_tfds_buffer_spills_evenly_in_order(nih, tmp_path, monkeypatch):
  """A split larger than TFDS's in-memory buffer (1 GB; 0 here) spills into its temp
  buckets: one record a bucket for a split this small (all went to bucket 0, read back
  whole: a real NIH or MIMIC build held its whole train split in RAM), and the shards hold
  the same records in the same order as when nothing spills."""
  from tensorflow_datasets.core import shuffle
  per_bucket = {}
  add = shuffle._Bucket.add

  def counted(self, key, data):
    per_bucket[self._path.name] = per_bucket.get(self._path.name, 0) + 1
    return add(self, key, data)

  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', 0)
  monkeypatch.setattr(shuffle._Bucket, 'add', counted)
  root = str(tmp_path / 'src')
  os.makedirs(root)
  write_source(root)
  path, manifest = fx.build('nih_chest_xray14', root, str(tmp_path / 'out'))
  assert sum(per_bucket.values()) == sum(manifest['counts'].values()) == 10
  assert max(per_bucket.values()) == 1
  for split in ('train', 'test'):
    assert [e['id'] for e in fx.examples(path, split)] == [
        e['id'] for e in fx.examples(nih[0], split)]


def test_planted_records_rejected_with_reasons(nih):
  path, manifest, rows, box_rows, bad, good = nih
  rejects = fx.rejects(path)
  assert manifest['num_rejects'] == 7
  ids = [b[0][:-4] for b in bad]
  assert "unknown label value 'Cardiomegally'" in rejects[ids[0]]['reason']
  assert 'image file missing' in rejects[ids[1]]['reason']
  assert 'mode P' in rejects[ids[2]]['reason']
  assert 'mode RGBA' in rejects[ids[3]]['reason']
  assert 'neither train_val_list.txt nor test_list.txt' in rejects[ids[4]]['reason']
  assert 'outside the 64x64 image' in rejects[good[2][:-4]]['reason']
  assert rejects[good[2][:-4]]['file'] == 'Data_Entry_2017_v2020.csv'
  orphan = rejects['99999999_000']
  assert orphan['file'] == 'BBox_List_2017.csv' and orphan['row'] == len(box_rows) + 3


def test_the_kaggle_layout_builds_and_an_empty_label_file_is_named(tmp_path):
  # Kaggle's copy spreads the PNGs over images_001/images/ ... with no images/ folder.
  src = str(tmp_path / 'src')
  write_source(src)
  os.rename(os.path.join(src, 'images'), os.path.join(src, 'part'))
  os.makedirs(os.path.join(src, 'images_001'))
  os.rename(os.path.join(src, 'part'), os.path.join(src, 'images_001', 'images'))
  path, manifest = fx.build('nih_chest_xray14', src, str(tmp_path / 'out'))
  assert manifest['num_rejects'] == 7 and sum(manifest['counts'].values()) > 0
  open(os.path.join(src, 'Data_Entry_2017_v2020.csv'), 'w').close()  # a failed download
  with pytest.raises(ManualDirError, match=r'Data_Entry_2017_v2020.csv: empty'):
    fx.build('nih_chest_xray14', src, str(tmp_path / 'out2'))
  os.rename(os.path.join(src, 'images_001'), os.path.join(src, 'elsewhere'))
  with pytest.raises(ManualDirError, match=r"expected images/ \(or Kaggle's"):
    fx.build('nih_chest_xray14', src, str(tmp_path / 'out3'))


@pytest.mark.parametrize('file, line, edit, match', [
    # A stray quote swallowed every later row into one field (9,500 of 10,000 lost, exit 0).
    ('Data_Entry_2017_v2020.csv', 3, lambda s: s.replace(',', ',"', 1), '2 fields where 11'),
    ('Data_Entry_2017_v2020.csv', 3, lambda s: ',"'.join(s.rsplit(',', 1)), 'a field spans'),
    ('Data_Entry_2017_v2020.csv', 4, lambda s: s.rsplit(',', 2)[0], '9 fields where 11 are'),
    ('BBox_List_2017.csv', 2, lambda s: s.replace(',', ',"', 1), '2 fields where 6 are'),
    ('BBox_List_2017.csv', 3, lambda s: s.rsplit(',', 1)[0], '5 fields where 6 are'),
])
def test_a_malformed_row_is_named_not_lost(tmp_path, file, line, edit, match):
  src = str(tmp_path / 'src')
  write_source(src)
  path = os.path.join(src, file)
  with open(path) as f:
    lines = f.read().split('\n')
  lines[line - 1] = edit(lines[line - 1])
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  with pytest.raises(ManualDirError, match=rf'{file}: line {line}: malformed CSV: {match}'):
    fx.build('nih_chest_xray14', src, str(tmp_path / 'out'))


def test_on_first_use_a_killed_builds_leftover_is_named(tmp_path, caplog):
  """main.py's build on first use (build.ensure_built): a killed build's `<dir>.tmp-*`
  (as large as the dataset) is named, as the data_prep command does."""
  from data_prep import build as build_lib
  src, out = str(tmp_path / 'src'), str(tmp_path / 'nih')
  write_source(src)
  os.makedirs(f'{out}.tmp-0badc0de/partial')
  with caplog.at_level('WARNING'):
    manifest = build_lib.ensure_built('nih_chest_xray14', out, manual_dir=src)
  assert sum(manifest['counts'].values()) == 10
  assert f'unfinished build dir(s) beside {out}' in caplog.text
  assert f'{out}.tmp-0badc0de' in caplog.text


def test_nih_mass_and_nodule_are_lung_lesion():
  from data_prep.nih_chest_xray14 import nih_chest_xray14_dataset_builder as nih
  for name in ('Mass', 'Nodule', 'Mass|Effusion'):
    assert nih.parse_labels(name)['Lung Lesion'] == 1
  labels = nih.parse_labels('Hernia')
  assert 'Hernia' not in labels and not any(labels.values())


def test_a_film_on_both_split_lists_is_rejected_not_trained_on(tmp_path):
  # NIH's lists are disjoint; a hand-edited copy that is not put a test film in train.
  src = str(tmp_path / 'src')
  _, _, _, good = write_source(src)
  with open(os.path.join(src, 'train_val_list.txt'), 'a') as f:
    f.write(good[-1] + '\n')  # a test film, now on both lists
  path, manifest = fx.build('nih_chest_xray14', src, str(tmp_path / 'out'))
  assert manifest['num_rejects'] == 8
  reason = fx.rejects(path)[good[-1][:-4]]['reason']
  assert 'in both train_val_list.txt and test_list.txt' in reason
  ids = {e['id'] for split in ('train', 'test') for e in fx.examples(path, split)}
  assert good[-1][:-4] not in ids
