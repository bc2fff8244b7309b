"""The RadFM builder on files written here in RadFM's published layouts: the Radiopaedia
VQA CSV (image_path to an (S, 3, H, W, z) .npy or a NIfTI, question, answer) and the
caption JSON (npy_path, finding, impression, pat, pre, ...), with RadFM's machine paths
to rewrite and corrupt, missing and NaN volumes among them."""

from __future__ import annotations

import io
import json
import os
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from data_prep.builder import ManualDirError
from data_prep.radfm import radfm_dataset_builder, scans
from radjax.data import schema
from tests import data_prep_fixtures as fx

FOREIGN = '/mnt/petrelfs/share_data/radiopaedia/processed_images'  # RadFM's machine


def _case(src, name, shape, seed=0, nan=False):
  array = np.random.default_rng(seed).uniform(-1000, 400, shape).astype(np.float32)
  if nan:
    array[0, 0, 1, 1, 1] = np.nan
  path = os.path.join(src, 'processed_images', name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, array)
  return array


def _volumes(example):
  return [np.load(io.BytesIO(im['data']), allow_pickle=False) for im in example['images']]


@pytest.fixture
def src(tmp_path):
  src = str(tmp_path / 'src')
  arrays = {'c1': _case(src, 'c1_0.npy', (2, 3, 16, 12, 6)),
            'c2': _case(src, 'c2_0.npy', (1, 3, 16, 16, 4), seed=1)}
  _case(src, 'nan_0.npy', (1, 3, 8, 8, 4), nan=True)
  fx.write_file(os.path.join(src, 'processed_images', 'broken_0.npy'), b'\x93NUMPY\x01\x00garbage')
  nii = np.random.default_rng(2).uniform(0, 300, (10, 9, 5)).astype(np.float32)
  nib.save(nib.Nifti1Image(nii, np.diag([0.8, 0.8, 3.0, 1.0])),
           os.path.join(src, 'processed_images', 'mr.nii.gz'))
  rows = [
    [0, f'{FOREIGN}/c1_0.npy', 'What abnormality is seen?', 'A left upper lobe mass.'],
    [1, f'{FOREIGN}/c1_0.npy', 'Which lobe?', 'The left upper lobe.'],
    [2, f'{FOREIGN}/broken_0.npy', 'Q?', 'A.'],
    [3, f'{FOREIGN}/nowhere_0.npy', 'Q?', 'A.'],
    [4, f'{FOREIGN}/nan_0.npy', 'Q?', 'A.'],
    [5, 'processed_images/mr.nii.gz', 'Which sequence?', 'T1.'],
    [6, f'{FOREIGN}/c2_0.npy', 'Is there an effusion?', ''],
  ]
  fx.write_csv(os.path.join(src, 'data_csv', 'radiology_vqa_train.csv'),
               ['', 'image_path', 'question', 'answer'], rows)
  fx.write_csv(os.path.join(src, 'data_csv', 'radiology_vqa_test.csv'),
               ['', 'image_path', 'question', 'answer'],
               [[0, f'{FOREIGN}/c2_0.npy', 'Is there an effusion?', 'No.']])
  captions = [
    {'npy_path': f'{FOREIGN}/c2_0.npy', 'title': 'Pleural effusion', 'pat': '60 year old man.',
     'pre': 'Breathless.', 'finding': 'Right pleural effusion.', 'impression': 'Effusion.',
     'articles': [], 'radiographic_features': []},
    {'npy_path': f'{FOREIGN}/c1_0.npy', 'pat': '', 'pre': '', 'finding': 'A mass.',
     'impression': ''},
    {'npy_path': f'{FOREIGN}/c1_0.npy', 'pat': '', 'pre': '', 'finding': '', 'impression': ''},
    'not an object',
  ]
  fx.write_file(os.path.join(src, 'radiology_article_npy_train.json'),
                json.dumps(captions).encode())
  return src, arrays


def test_vqa_csv(src, tmp_path):
  src, arrays = src
  path, manifest = fx.build('radfm', src, str(tmp_path / 'out'), config='vqa')
  train = {e['id']: e for e in fx.examples(path, 'train')}
  assert sorted(train) == ['radiology_vqa_train-0000002', 'radiology_vqa_train-0000003',
                           'radiology_vqa_train-0000007']
  first = train['radiology_vqa_train-0000002']
  schema.validate(first)
  assert first['conversation'] == [
    {'role': 'user', 'text': 'What abnormality is seen?'},
    {'role': 'assistant', 'text': 'A left upper lobe mass.'}]
  # One float16 (H, W, z) image per scan, channel 0, min-max to [0, 1] over the case.
  volumes = _volumes(first)
  assert [v.shape for v in volumes] == [(16, 12, 6), (16, 12, 6)]
  assert all(im['kind'] == '3d' and im['spacing'] is None for im in first['images'])
  case = arrays['c1']
  for s, v in enumerate(volumes):
    expected = (case[s, 0] - case.min()) / (case.max() - case.min())
    assert v.dtype == np.float16 and np.abs(v.astype(np.float32) - expected).max() < 1e-3
  mr = train['radiology_vqa_train-0000007']
  [image] = mr['images']
  assert image['spacing'] == pytest.approx([0.8, 0.8, 3.0])
  assert _volumes(mr)[0].shape == (9, 10, 5)  # NIfTI laid out as an axial display
  assert [e['id'] for e in fx.examples(path, 'test')] == ['radiology_vqa_test-0000002']

  rejects = fx.rejects(path)
  assert manifest['num_rejects'] == 4 == len(rejects)
  broken = rejects['radiology_vqa_train-0000004']
  assert broken['file'] == 'data_csv/radiology_vqa_train.csv' and broken['row'] == 4
  assert 'processed_images/broken_0.npy: not a readable .npy' in broken['reason']
  assert 'nowhere_0.npy: image file not found' in rejects['radiology_vqa_train-0000005']['reason']
  assert 'nan_0.npy: non-finite voxels' in rejects['radiology_vqa_train-0000006']['reason']
  assert 'empty question or answer' in rejects['radiology_vqa_train-0000008']['reason']


def test_caption_json_and_resized_config(src, tmp_path):
  src, _ = src
  path, manifest = fx.build('radfm', src, str(tmp_path / 'out'), config='caption_256')
  train = fx.examples(path, 'train')
  assert [e['id'] for e in train] == ['radiology_article_npy_train-0000000',
                                      'radiology_article_npy_train-0000001']
  first, second = train
  assert first['report'] == {'findings': 'Right pleural effusion.', 'impression': 'Effusion.'}
  assert first['conversation'][0]['text'].startswith('60 year old man. Breathless. ')
  assert first['conversation'][1]['text'] == (
    'Findings: Right pleural effusion. Impression: Effusion.')
  assert second['conversation'] == [] and second['report']['findings'] == 'A mass.'
  assert [v.shape for v in _volumes(second)] == [(256, 256, 6)] * 2
  rejects = fx.rejects(path)
  assert 'both empty' in rejects['radiology_article_npy_train-0000002']['reason']
  assert 'not an object' in rejects['radiology_article_npy_train-0000003']['reason']
  assert manifest['counts'] == {'train': 2}  # no caption test file: no test split


def test_missing_files_name_what_is_expected(tmp_path):
  empty = tmp_path / 'src'
  empty.mkdir()
  (empty / 'unrelated.txt').write_text('x')
  with pytest.raises(ManualDirError, match='radiology_vqa_train.csv'):
    fx.build('radfm', str(empty), str(tmp_path / 'out'), config='vqa')


def test_resolve_tries_trailing_components(tmp_path):
  root = tmp_path / 'root'
  (root / 'a' / 'b').mkdir(parents=True)
  (root / 'a' / 'b' / 'x.npy').write_bytes(b'')
  (root / 'y.npy').write_bytes(b'')
  resolve = radfm_dataset_builder.resolve
  assert resolve(str(root), '/far/away/a/b/x.npy') == str(root / 'a' / 'b' / 'x.npy')
  assert resolve(str(root), '/far/away/y.npy') == str(root / 'y.npy')
  assert resolve(str(root), str(root / 'y.npy')) == str(root / 'y.npy')


def test_scan_shapes():
  assert [s.shape for s in scans._scan_arrays(np.zeros((3, 4, 5, 6, 7)), 'f')] == [(5, 6, 7)] * 3
  assert [s.shape for s in scans._scan_arrays(np.zeros((3, 5, 6, 7)), 'f')] == [(5, 6, 7)]
  with pytest.raises(ValueError, match=r"f: array of shape \(5, 6\); expected RadFM's"):
    scans._scan_arrays(np.zeros((5, 6)), 'f')


def test_one_slice_scan_is_a_2d_image_kept(tmp_path):
  # RadFM stores 2D images as z = 1 ([1, 3, H, W, 1]); rows and cols still need 2.
  path = str(tmp_path / 'xray_0.npy')
  np.save(path, np.random.default_rng(0).uniform(0, 1, (1, 3, 16, 12, 1)).astype(np.float32))
  [entry] = scans.scan_entries(path)
  assert np.load(io.BytesIO(entry['data'])).shape == (16, 12, 1)
  schema.validate(schema.make_example(id='x', images=[entry], report={'findings': 'F.'}))
  thin = str(tmp_path / 'thin_0.npy')
  np.save(thin, np.ones((1, 3, 1, 12, 4), np.float32))
  with pytest.raises(ValueError, match=r'thin_0.npy: scan of shape \(1, 12, 4\)'):
    scans.scan_entries(thin)


def test_scans_of_a_case_share_one_min_max(tmp_path):
  # RadFM's loaders rescale the whole (S, 3, H, W, z) array: a dim scan stays dim.
  case = np.zeros((2, 3, 8, 8, 4), np.float32)
  case[0] = np.linspace(0, 100, 8 * 8 * 4).reshape(8, 8, 4)
  case[1] = np.linspace(-50, 1000, 8 * 8 * 4).reshape(8, 8, 4)
  path = str(tmp_path / 'case_0.npy')
  np.save(path, case)
  expected = (case - case.min()) / (case.max() - case.min())
  for s, entry in enumerate(scans.scan_entries(path)):
    v = np.load(io.BytesIO(entry['data'])).astype(np.float32)
    np.testing.assert_allclose(v, expected[s, 0], atol=1e-3)
  assert np.load(io.BytesIO(scans.scan_entries(path, size=16)[0]['data'])).max() < 0.15
  np.save(path, np.ones((2, 3, 8, 8, 4), np.float32))
  with pytest.raises(ValueError, match='case_0.npy: constant case'):
    scans.scan_entries(path)


def test_a_case_is_read_one_scan_and_one_channel_at_a_time(tmp_path):
  # RadFM's files are float64 at times, 3 copies of each slice, several scans a case: the
  # whole array read at once was 3 GiB for 8 scans of 512 x 512 x 64.
  scan = np.random.default_rng(0).uniform(-1000, 1000, (4, 1, 64, 64, 32))
  case = np.repeat(scan, 3, axis=1)  # RadFM's channels are copies
  path = str(tmp_path / 'case_0.npy')
  np.save(path, case)
  tracemalloc.start()
  try:
    entries = scans.scan_entries(path)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert len(entries) == 4
  assert peak < case.nbytes / 4, (peak, case.nbytes)
  expected = (case[3, 0] - case.min()) / (case.max() - case.min())
  np.testing.assert_allclose(np.load(io.BytesIO(entries[3]['data'])), expected, atol=1e-3)
  case[2, 0, 5, 5, 5] = np.nan
  np.save(path, case)
  with pytest.raises(ValueError, match=r'case_0.npy scan 2: non-finite voxels'):
    scans.scan_entries(path)


def test_malformed_csv_names_file_and_line(src, tmp_path, capsys):
  # A stray unbalanced quote swallows the rest of the file into one field past csv's
  # field limit: one error line naming the file and the line the quote opened on.
  from data_prep import __main__ as cli
  from data_prep import checks
  src, _ = src
  fx.write_file(os.path.join(src, 'data_csv', 'radiology_vqa_train.csv'), (
    'image_path,question,answer\n'
    f'{FOREIGN}/c2_0.npy,Q?,A.\n'
    f'{FOREIGN}/c2_0.npy,"Q?,A.\n' + 'x\n' * 600_000).encode())  # 1.2M chars
  assert cli.main(['build', 'radfm', '--config', 'vqa', '--manual_dir', src,
                   '--data_dir', str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: data_csv/radiology_vqa_train.csv: line 3: malformed CSV: '
                        'field larger than field limit') and 'Traceback' not in err
  # A long field under the raised limit (Python's default is 131,072) is read.
  long = tmp_path / 'long.csv'
  long.write_text('a,b\n1,' + 'y' * 200_000 + '\n')
  assert [line for line, _ in checks.read_csv(long, ('a', 'b'))] == [2]


def test_num_shards_capped_at_a_splits_records_and_checked(src, tmp_path, capsys):
  # TFDS's local writer fails on a split with fewer records than --num_shards (Beam drops
  # its empty shards): capped at one shard per record, as Beam ends up with.
  from data_prep import __main__ as cli
  from data_prep import build as build_lib
  src, _ = src
  path, manifest = fx.build('radfm', src, str(tmp_path / 'out'), config='vqa', num_shards=5)
  assert manifest['counts'] == {'train': 3, 'test': 1}
  shards = sorted(f for f in os.listdir(path) if '.array_record-' in f)
  assert shards == ['radfm-test.array_record-00000-of-00001',
                    *[f'radfm-train.array_record-0000{i}-of-00003' for i in range(3)]]
  for bad in (0, -1):
    with pytest.raises(ValueError, match=f'radfm: num_shards {bad}: must be at least 1'):
      build_lib.build('radfm', str(tmp_path / 'bad'), manual_dir=src, num_shards=bad)
    with pytest.raises(SystemExit):
      cli.main(['build', 'radfm', '--manual_dir', src, '--data_dir', str(tmp_path / 'bad'),
                f'--num_shards={bad}'])
    assert f'--num_shards: {bad}: must be at least 1' in capsys.readouterr().err
  assert not os.path.exists(tmp_path / 'bad')


def test_a_split_without_records_is_left_out_in_true_words(src, tmp_path, capsys):
  # A header-only test CSV: the test split is left out (nothing was rejected), train built.
  from data_prep import __main__ as cli
  from radjax.data import source
  src, _ = src
  test_csv = os.path.join(src, 'data_csv', 'radiology_vqa_test.csv')
  fx.write_csv(test_csv, ['', 'image_path', 'question', 'answer'], [])
  assert cli.main(['build', 'radfm', '--config', 'vqa', '--manual_dir', src,
                   '--data_dir', str(tmp_path / 'out')]) == 0
  err = capsys.readouterr().err
  assert "warning: split 'test' has no records in its source files" in err
  assert 'rejected' not in err
  path = str(tmp_path / 'out/radfm/vqa/1.0.0')
  manifest = fx.build('radfm', src, str(tmp_path / 'out'), config='vqa')[1]
  assert manifest['counts'] == {'train': 3, 'test': 0} and manifest['empty_splits'] == ['test']
  assert manifest['rejects_by_split']['test'] == 0
  with pytest.raises(FileNotFoundError, match="no split 'test'.*source files had no records"):
    source.split_files(path, 'test')
  # Every split without records is still an error.
  fx.write_csv(os.path.join(src, 'data_csv', 'radiology_vqa_train.csv'),
               ['', 'image_path', 'question', 'answer'], [])
  with pytest.raises(ValueError, match='radfm: no split has records in its source files'):
    fx.build('radfm', src, str(tmp_path / 'out2'), config='vqa')


def test_a_beam_build_without_beam_says_where_beam_is(src, tmp_path, capsys, monkeypatch):
  import importlib.util

  from data_prep import __main__ as cli
  src, _ = src
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'apache_beam' else find_spec(name, *a))
  monkeypatch.setitem(__import__('sys').modules, 'apache_beam', None)  # import fails too
  for flag in ('--beam_runner=FnApiRunner', '--beam_options=--direct_num_workers=2'):
    assert cli.main(['build', 'radfm', '--config', 'vqa', '--manual_dir', src,
                     '--data_dir', str(tmp_path / 'out'), flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --beam_runner/--beam_options: Apache Beam is not installed')
    assert 'bash launch/beam_venv.sh' in err and len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / 'out')


def test_show_limit_must_not_be_negative(src, tmp_path, capsys):
  from data_prep import __main__ as cli
  from data_prep import show
  path, _ = fx.build('radfm', src[0], str(tmp_path / 'out'), config='vqa')
  capsys.readouterr()  # TFDS's progress output
  assert cli.main(['show', path, '--limit', '1']) == 0
  assert len(capsys.readouterr().out.splitlines()) == 1
  with pytest.raises(SystemExit) as e:
    cli.main(['show', path, '--limit', '-1'])
  assert e.value.code == 2 and '--limit: -1: must be at least 0' in capsys.readouterr().err
  with pytest.raises(ValueError, match='limit -1: must be at least 0'):
    show.show(path, 'train', -1, io.StringIO())


def test_a_build_names_unfinished_dirs_left_beside_it(src, tmp_path, capsys):
  # TFDS never removes the incomplete.XXXXXX_<version> dir of a killed build.
  from data_prep import __main__ as cli
  stale = tmp_path / 'out/radfm/vqa/incomplete.K1LL3D_1.0.0'
  stale.mkdir(parents=True)
  (tmp_path / 'out/radfm/vqa/incomplete.K1LL3D_0.9.0').mkdir()  # another version: not ours
  assert cli.main(['build', 'radfm', '--config', 'vqa', '--manual_dir', src[0],
                   '--data_dir', str(tmp_path / 'out')]) == 0
  notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]
  assert notes == [f'note: 1 unfinished build dir(s) beside it, from killed builds (or one '
                   f'running now): {stale}; delete them once no build of it runs']
  assert stale.exists()  # only named: a running build may own it


def test_resize_scales_spacing_per_axis():
  from data_prep.volume_ops import Volume
  vol = Volume(array=np.zeros((4, 8, 2), np.float32), spacing=(1.0, 2.0, 3.0), where='v')
  out = scans._resize(vol, 4)  # 8 columns (sx 1 mm) -> 4; 4 rows (sy 2 mm) stay 4
  assert out.array.shape == (4, 4, 2) and out.spacing == (2.0, 2.0, 3.0)
