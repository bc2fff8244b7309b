"""CheXpert builder on a fixture in the publisher's layout (real CSV rows from the
torchxrayvision wheel), with planted bad records."""
import csv
import os
import subprocess
import sys

import pytest

from data_prep import build as build_lib
from data_prep.builder import ManualDirError
from radjax.data import schema
from tests import data_prep_fixtures as fx

N = 12  # real rows


def write_source(root) -> tuple[list[str], list[list[str]]]:
  """Writes the fixture under root (the folder holding CheXpert-v1.0-small/); returns the
  CSV header and the N good rows."""
  header, rows = fx.txv_rows('chexpert_train.csv.gz', N)
  bad = [list(r) for r in rows[:6]]
  for r in bad[:5]:
    r[header.index('Frontal/Lateral')] = 'Frontal'  # as their file names say (rows[3]: Lateral)
  for r in rows:
    fx.write_file(os.path.join(root, r[0]), fx.image_bytes(seed=len(r[0])))
  # Planted bad records (paths in the real pattern; each one broken in one way).
  def path(i):
    return f'CheXpert-v1.0-small/train/patient9999{i}/study1/view1_frontal.jpg'
  bad[0][0] = path(0)  # image file missing
  bad[1][0] = path(1)
  fx.write_file(os.path.join(root, path(1)), fx.image_bytes()[:200])  # truncated JPEG
  bad[2][0] = path(2)
  fx.write_file(os.path.join(root, path(2)), fx.image_bytes())
  bad[2][header.index('Edema')] = '2.0'  # unknown label value
  bad[3][0] = path(3)
  fx.write_file(os.path.join(root, path(3)), b'')  # empty file
  bad[4][0] = path(4)
  fx.write_file(os.path.join(root, path(4)), fx.image_bytes(size=(1, 1)))  # degenerate
  bad[5] = list(rows[3])  # duplicate of a good row
  fx.write_csv(os.path.join(root, 'CheXpert-v1.0-small/train.csv'), header, rows + bad)
  valid = [list(rows[0])]
  valid[0][0] = 'CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg'
  fx.write_file(os.path.join(root, valid[0][0]), fx.image_bytes(seed=7))
  fx.write_csv(os.path.join(root, 'CheXpert-v1.0-small/valid.csv'), header, valid)
  return header, rows


@pytest.fixture(scope='module')
def chexpert_src(tmp_path_factory):
  root = tmp_path_factory.mktemp('chexpert_src')
  header, rows = write_source(root)
  return str(root), header, rows


@pytest.fixture(scope='module')
def built(chexpert_src, tmp_path_factory):
  src, _, _ = chexpert_src
  return fx.build('chexpert', src, str(tmp_path_factory.mktemp('out')))


def test_counts_fields_and_labels(built, chexpert_src):
  path, manifest = built
  _, header, rows = chexpert_src
  assert manifest['counts'] == {'train': N, 'val': 1} and manifest['num_rejects'] == 6
  train = fx.examples(path, 'train')
  assert [e['id'] for e in train] == [r[0].split('/', 1)[1][:-4] for r in rows]
  first = train[0]  # the real first row: No Finding 1.0, Pneumothorax 0.0, Support Devices 1.0
  assert first['id'] == 'train/patient00001/study1/view1_frontal'
  assert first['labels'] == {'No Finding': 1, 'Pneumothorax': 0, 'Support Devices': 1}
  assert first['source'] == 'chexpert' and first['split'] == 'train'
  assert first['images'][0]['format'] == 'jpeg'
  with open(os.path.join(chexpert_src[0], rows[0][0]), 'rb') as f:
    assert first['images'][0]['data'] == f.read()  # the publisher's bytes, not re-encoded
  for ex, row in zip(train, rows):
    for obs in ex['labels']:
      assert float(row[header.index(obs)]) == ex['labels'][obs]
    assert len(ex['labels']) == sum(row[header.index(o)] != '' for o in header[5:])
  assert fx.examples(path, 'val')[0]['id'] == 'valid/patient64541/study1/view1_frontal'


def test_every_planted_record_is_rejected_with_its_reason(built, chexpert_src):
  path, _ = built
  rejects = fx.rejects(path)
  reasons = {k: r['reason'] for k, r in rejects.items()}
  pid = 'train/patient9999{}/study1/view1_frontal'
  assert 'image file missing' in reasons[pid.format(0)]
  assert 'unreadable image' in reasons[pid.format(1)]
  assert "Edema: unknown label value '2.0'" in reasons[pid.format(2)]
  assert 'empty file' in reasons[pid.format(3)]
  assert 'degenerate image 1x1' in reasons[pid.format(4)]
  dup = rejects[chexpert_src[2][3][0].split('/', 1)[1][:-4]]
  assert 'duplicate' in dup['reason'] and dup['row'] == N + 7
  assert all(r['file'] == 'CheXpert-v1.0-small/train.csv' and r['split'] == 'train'
             for r in rejects.values())
  assert rejects[pid.format(0)]['row'] == N + 2  # line in the CSV: header is line 1


def test_a_path_is_normalised_so_a_dotted_copy_is_a_duplicate_and_none_leaves_the_folder(
    tmp_path):
  header, rows = write_source(tmp_path)
  dotted, outside = list(rows[1]), list(rows[2])
  dotted[0] = dotted[0].replace('/train/', '/train/../train/./')
  outside[0] = 'CheXpert-v1.0-small/../../elsewhere/view1_frontal.jpg'
  with open(tmp_path / 'CheXpert-v1.0-small/train.csv', 'a', newline='') as f:
    csv.writer(f).writerows([dotted, outside])
  path, manifest = fx.build('chexpert', str(tmp_path), str(tmp_path / 'out'))
  assert manifest['counts']['train'] == N and manifest['rejects_by_split']['train'] == 8
  got = {r['row']: (rid, r['reason']) for rid, r in fx.rejects(path).items()}
  rid, reason = got[N + 8]  # the dotted row: the same id as row 3's, hence a duplicate
  assert rid == rows[1][0].split('/', 1)[1][:-4] and 'duplicate' in reason
  assert got[N + 9][1] == f"Path: {outside[0]!r} is not below the dataset's folder"


def test_rerun_is_a_no_op(built, chexpert_src):
  path, _ = built
  stamp = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  data_dir = os.path.dirname(os.path.dirname(os.path.dirname(path)))  # chexpert/default/1.0.0
  again = build_lib.build('chexpert', data_dir, manual_dir=chexpert_src[0])
  assert again == path
  assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == stamp


def test_wrong_manual_dir_names_the_expected_file(tmp_path):
  for missing in (tmp_path / 'nonexistent', tmp_path, None):  # tmp_path is empty here
    with pytest.raises(ManualDirError, match='not a directory or is empty'):
      build_lib.build('chexpert', str(tmp_path / 'out'), manual_dir=missing and str(missing))
  (tmp_path / 'CheXpert-v1.0-small').mkdir()
  with pytest.raises(ManualDirError, match=r'CheXpert-v1.0-small/train.csv'):
    build_lib.build('chexpert', str(tmp_path / 'out'), manual_dir=str(tmp_path))
  assert not (tmp_path / 'out').exists()  # TFDS's empty downloads/ and .config/ removed
  proc = subprocess.run([sys.executable, '-m', 'data_prep', 'build', 'chexpert', '--manual_dir',
                         str(tmp_path), '--data_dir', str(tmp_path / 'out')],
                        capture_output=True, text=True)
  assert proc.returncode == 2 and 'CheXpert-v1.0-small/train.csv' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_a_file_that_is_no_image_is_rejected_in_words_that_do_not_change_run_to_run():
  """PIL's UnidentifiedImageError names the in-memory file's address; rejects.jsonl (and a
  Beam build's, compared byte for byte) must not."""
  from data_prep import checks
  from radjax.data import images, schema
  with pytest.raises(checks.Reject) as e:
    checks.check_image_bytes(b'hello world', 'image/x.png')
  assert str(e.value) == ('image/x.png: unreadable image: cannot identify the image file '
                          '(not a PNG or JPEG)')
  with pytest.raises(schema.SchemaError) as e:
    images.decode_image({'data': b'hello world', 'format': 'png', 'kind': '2d'}, 1, 'r1')
  assert '0x' not in str(e.value) and "record 'r1': images: undecodable" in str(e.value)


def test_an_unknown_builder_config_is_named_with_the_ones_there_are(tmp_path):
  with pytest.raises(ValueError, match="chexpert: no config 'lateral'; its configs: default, "
                     'frontal'):
    build_lib.build('chexpert', str(tmp_path), manual_dir=str(tmp_path), config='lateral')
  with pytest.raises(ValueError, match="nih_chest_xray14: no config 'frontal'; it has none"):
    build_lib.build('nih_chest_xray14', str(tmp_path), manual_dir=str(tmp_path),
                    config='frontal')
  with pytest.raises(ValueError, match="mimic_cxr: no config 'frontl'; its configs: default, "
                     'frontal'):
    build_lib.build('mimic_cxr', str(tmp_path), manual_dir=str(tmp_path), config='frontl')


def test_a_manual_dir_for_a_builder_that_reads_none_is_refused(tmp_path, capsys):
  """`python -m data_prep build demo --manual_dir X` built the demo and dropped X without a
  word (main.py's builder_kwargs refused it already)."""
  from data_prep.__main__ import main
  assert main(['build', 'demo', '--data_dir', str(tmp_path / 'out'), '--manual_dir',
               str(tmp_path)]) == 2
  assert 'demo: --manual_dir ' + str(tmp_path) + ': demo reads no downloaded files' in (
      capsys.readouterr().err)
  assert not (tmp_path / 'out').exists()


def test_a_wrong_manual_dir_gives_the_download_instructions(tmp_path, capsys):
  """The folder inside the download instead of the one that holds it: the error names the
  files it looked for, then how the dataset is downloaded."""
  from data_prep import __main__ as cli
  inner = tmp_path / 'CheXpert-v1.0-small'
  inner.mkdir()
  (inner / 'valid.csv').write_text('Path\n')
  assert cli.main(['build', 'chexpert', '--manual_dir', str(inner), '--data_dir',
                   str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert 'does not look like CheXpert' in err and 'Stanford licence' in err


def test_a_split_whose_every_record_is_rejected_is_left_out_and_the_others_are_kept(
    tmp_path, capsys):
  """A partial download (here: valid/ missing) still builds train; the empty split's
  rejects are kept, the manifest says it is empty, and reading it names why."""
  from data_prep import __main__ as cli
  from radjax.data import source
  header, rows = write_source(tmp_path / 'src')
  valid = [list(r) for r in rows[:2]]
  for i, r in enumerate(valid):
    r[0] = f'CheXpert-v1.0-small/valid/patient7777{i}/study1/view1_frontal.jpg'  # not there
  fx.write_csv(str(tmp_path / 'src/CheXpert-v1.0-small/valid.csv'), header, valid)
  assert cli.main(['build', 'chexpert', '--manual_dir', str(tmp_path / 'src'), '--data_dir',
                   str(tmp_path / 'out')]) == 0
  err = capsys.readouterr().err
  assert "every record of split 'val' was rejected" in err, err[-600:]
  path = str(tmp_path / 'out/chexpert/default/1.0.0')  # the default config's dir
  manifest = build_lib.read_manifest(path)
  assert manifest['counts'] == {'train': N, 'val': 0} and manifest['empty_splits'] == ['val']
  assert manifest['rejects_by_split'] == {'train': 6, 'val': 2}
  assert [e['id'] for e in fx.examples(path, 'train')] == [r[0].split('/', 1)[1][:-4]
                                                          for r in rows]
  val_rejects = [r for r in fx.rejects(path).values() if r['split'] == 'val']
  assert [(r['row'], 'image file missing' in r['reason']) for r in val_rejects] == [
    (2, True), (3, True)]
  with pytest.raises(FileNotFoundError, match="no split 'val'.*every record of it was rejected"):
    source.split_files(path, 'val')
  # Every split empty is still an error naming a split and a reason.
  fx.write_csv(str(tmp_path / 'src/CheXpert-v1.0-small/train.csv'), header, valid)
  with pytest.raises(ValueError, match='every one of the 2 records of split .*image file missing'):
    build_lib.build('chexpert', str(tmp_path / 'out2'), manual_dir=str(tmp_path / 'src'))
  assert not os.path.exists(tmp_path / 'out2/chexpert/default/1.0.0')


# The test set as CheXlocalize's download holds it: CheXpert/test_labels.csv (Path and the
# 14 observations, in train.csv's order, each 1 or 0) and CheXpert/test/patientN/studyN/.
# Patient numbers from 64741 on, as the test studies are numbered; the labels are made up.
TEST_HEADER = ['Path', 'No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly',
               'Lung Opacity', 'Lung Lesion', 'Edema', 'Consolidation', 'Pneumonia',
               'Atelectasis', 'Pneumothorax', 'Pleural Effusion', 'Pleural Other', 'Fracture',
               'Support Devices']
TEST_ROWS = [
  ['test/patient64741/study1/view1_frontal.jpg'] + list('01110000000001'),
  ['test/patient64741/study1/view2_lateral.jpg'] + list('01110000000001'),  # every view kept
  ['test/patient64742/study1/view1_frontal.jpg', '1.0'] + ['0.0'] * 13,
]


def write_test_set(root) -> None:
  for i, row in enumerate(TEST_ROWS):
    fx.write_file(os.path.join(root, 'CheXpert', row[0]), fx.image_bytes(seed=100 + i))
  bad = [list(TEST_ROWS[0]) for _ in range(4)]
  bad[0][0] = 'test/patient64743/study1/view1_frontal.jpg'  # image file missing
  bad[1][0] = 'test/patient64744/study1/view1_frontal.jpg'
  bad[1][TEST_HEADER.index('Edema')] = '-1.0'  # no uncertain labels in the test set
  bad[2][0] = 'test/patient64745/study1/view1_frontal.jpg'
  bad[2][TEST_HEADER.index('Fracture')] = ''  # nor blank ones
  bad[3][0] = 'valid/patient64541/study1/view1_frontal.jpg'  # not a test image
  for row in bad[1:]:
    fx.write_file(os.path.join(root, 'CheXpert', row[0]), fx.image_bytes(seed=7))
  fx.write_csv(os.path.join(root, 'CheXpert/test_labels.csv'), TEST_HEADER, TEST_ROWS + bad)


@pytest.fixture(scope='module')
def built_with_test(tmp_path_factory):
  root = tmp_path_factory.mktemp('chexpert_test_src')
  write_source(root)
  write_test_set(root)
  return str(root), fx.build('chexpert', str(root), str(tmp_path_factory.mktemp('out')))


def test_the_test_set_builds_as_its_own_split_with_every_label_1_or_0(built_with_test):
  src, (path, manifest) = built_with_test
  assert manifest['counts'] == {'train': N, 'val': 1, 'test': 3}
  assert manifest['rejects_by_split'] == {'train': 6, 'val': 0, 'test': 4}
  test = fx.examples(path, 'test')
  assert [e['id'] for e in test] == [r[0][:-4] for r in TEST_ROWS]
  first = test[0]
  assert first['id'] == 'test/patient64741/study1/view1_frontal' and first['split'] == 'test'
  assert first['labels'] == {obs: int(v) for obs, v in zip(TEST_HEADER[1:], TEST_ROWS[0][1:])}
  assert first['labels']['Cardiomegaly'] == 1 and first['labels']['No Finding'] == 0
  assert test[2]['labels'] == {'No Finding': 1} | {obs: 0 for obs in TEST_HEADER[2:]}
  for ex, row in zip(test, TEST_ROWS):
    assert set(ex['labels']) == set(schema.CHEXPERT_OBSERVATIONS)  # none absent, none -1
    with open(os.path.join(src, 'CheXpert', row[0]), 'rb') as f:
      assert ex['images'][0]['data'] == f.read()
  assert fx.examples(path, 'train')[0]['id'] == 'train/patient00001/study1/view1_frontal'


def test_a_bad_test_row_is_rejected_naming_the_file_and_row(built_with_test):
  _, (path, _) = built_with_test
  rejects = {k: r for k, r in fx.rejects(path).items() if r['split'] == 'test'}
  assert {r['file'] for r in rejects.values()} == {'CheXpert/test_labels.csv'}
  first_bad = len(TEST_ROWS) + 2  # the CSV's line: the header is line 1
  got = {r['row']: r['reason'] for r in rejects.values()}
  assert sorted(got) == list(range(first_bad, first_bad + 4))
  assert got[first_bad] == ('CheXpert/test/patient64743/study1/view1_frontal.jpg: image file '
                            'missing')
  assert got[first_bad + 1].startswith("Edema: unknown label value '-1.0' (the test labels are "
                                       '1.0 or 0.0')
  assert got[first_bad + 2].startswith("Fracture: unknown label value ''")
  assert got[first_bad + 3] == ("Path: 'valid/patient64541/study1/view1_frontal.jpg' is not an "
                                'image below test/')


def test_the_test_labels_may_sit_beside_train_csv_with_dataset_folder_paths(tmp_path):
  """RadVLM's data folder keeps them there as test.csv, with test/ beside train/; a Path
  with the dataset folder in front (as train.csv's) is read below the CSV's folder too."""
  write_source(tmp_path)
  rows = [list(TEST_ROWS[0]), list(TEST_ROWS[2])]
  rows[1][0] = 'CheXpert-v1.0/' + rows[1][0]
  for i, row in enumerate(TEST_ROWS[::2]):
    fx.write_file(str(tmp_path / 'CheXpert-v1.0-small' / row[0]), fx.image_bytes(seed=i))
  fx.write_csv(str(tmp_path / 'CheXpert-v1.0-small/test.csv'), TEST_HEADER, rows)
  path, manifest = fx.build('chexpert', str(tmp_path), str(tmp_path / 'out'))
  assert manifest['counts']['test'] == 2 and manifest['rejects_by_split']['test'] == 0
  assert [e['id'] for e in fx.examples(path, 'test')] == [
    'test/patient64741/study1/view1_frontal', 'test/patient64742/study1/view1_frontal']


def test_a_test_labels_file_without_an_observation_names_it(tmp_path):
  write_source(tmp_path)
  fx.write_csv(str(tmp_path / 'CheXpert/test_labels.csv'), TEST_HEADER[:-1],
               [r[:-1] for r in TEST_ROWS])
  with pytest.raises(ManualDirError, match=r"CheXpert/test_labels.csv: header lacks columns "
                     r"\['Support Devices'\]"):
    build_lib.build('chexpert', str(tmp_path / 'out'), manual_dir=str(tmp_path))
  assert not os.path.exists(tmp_path / 'out/chexpert/default/1.0.0')


# The `frontal` config (RadVLM's CheXpert: frontal films only). The view is the file
# name's in every split (the test labels have no view column); train.csv's and valid.csv's
# Frontal/Lateral must agree with it.
def write_views_source(root) -> tuple[list[str], list[list[str]]]:
  """write_source's release (3 of its N real train rows lateral) and test set, a lateral
  valid film, and two train rows whose view is in doubt; returns the two bad rows."""
  header, rows = write_source(root)
  write_test_set(root)
  valid = [list(rows[0]), list(rows[3])]  # rows[3]: a real lateral row
  valid[0][0] = 'CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg'
  valid[1][0] = 'CheXpert-v1.0-small/valid/patient64541/study1/view2_lateral.jpg'
  fx.write_file(os.path.join(root, valid[1][0]), fx.image_bytes(seed=8))
  fx.write_csv(os.path.join(root, 'CheXpert-v1.0-small/valid.csv'), header, valid)
  doubt = [list(rows[0]), list(rows[0])]
  doubt[0][0] = 'CheXpert-v1.0-small/train/patient99996/study1/view1_frontal.jpg'
  doubt[0][header.index('Frontal/Lateral')] = 'Lateral'  # says otherwise than its name
  doubt[1][0] = 'CheXpert-v1.0-small/train/patient99997/study1/view1.jpg'  # names no view
  for r in doubt:
    fx.write_file(os.path.join(root, r[0]), fx.image_bytes(seed=9))
  with open(os.path.join(root, 'CheXpert-v1.0-small/train.csv'), 'a', newline='') as f:
    csv.writer(f).writerows(doubt)  # after write_source's rows
  return header, doubt


@pytest.fixture(scope='module')
def built_views(tmp_path_factory):
  """The release built in both configs into one data_dir."""
  src = tmp_path_factory.mktemp('chexpert_views_src')
  _, doubt = write_views_source(src)
  out = str(tmp_path_factory.mktemp('out'))
  return (str(src), out, doubt, fx.build('chexpert', str(src), out),
          fx.build('chexpert', str(src), out, config='frontal'))


def _ids(path, split):
  return [e['id'] for e in fx.examples(path, split)]


def test_the_frontal_config_leaves_the_lateral_films_of_every_split_out(built_views):
  _, out, _, (default, m_all), (frontal, m_front) = built_views
  assert default == os.path.join(out, 'chexpert/default/1.0.0')
  assert frontal == os.path.join(out, 'chexpert/frontal/1.0.0')
  assert m_all['config'] == 'default' and m_front['config'] == 'frontal'
  # Default: every view (N train rows, 3 of them lateral; a lateral in val and in test).
  assert m_all['counts'] == {'train': N, 'val': 2, 'test': 3}
  assert (m_all['views'], m_all['filtered_by_view']) == ([], {'train': 0, 'val': 0, 'test': 0})
  # Frontal: the laterals left out (in train, the planted duplicate of one too), counted
  # per split, not rejected.
  assert m_front['counts'] == {'train': N - 3, 'val': 1, 'test': 2}
  assert m_front['views'] == ['Frontal']
  assert m_front['filtered_by_view'] == {'train': 4, 'val': 1, 'test': 1}
  for split in ('train', 'val', 'test'):
    every = _ids(default, split)
    assert any(i.endswith('_lateral') for i in every), split
    assert _ids(frontal, split) == [i for i in every if i.endswith('_frontal')], split
  assert _ids(frontal, 'test') == ['test/patient64741/study1/view1_frontal',
                                   'test/patient64742/study1/view1_frontal']
  assert fx.examples(frontal, 'val') == fx.examples(default, 'val')[:1]  # the same records
  # The planted duplicate repeats a lateral row: left out with it, so no reject in frontal.
  assert m_all['rejects_by_split'] == {'train': 8, 'val': 0, 'test': 4}
  assert m_front['rejects_by_split'] == {'train': 7, 'val': 0, 'test': 4}
  assert not any('duplicate' in r['reason'] for r in fx.rejects(frontal).values())


def test_a_view_in_doubt_is_a_reject_in_every_config_naming_the_file_and_row(built_views):
  _, _, _, (default, _), (frontal, _) = built_views
  first = N + 6 + 2  # the CSV's line: the header, N good rows and 6 planted bad ones before
  for path in (default, frontal):
    rejects = fx.rejects(path)
    mismatch = rejects['train/patient99996/study1/view1_frontal']
    assert (mismatch['file'], mismatch['row']) == ('CheXpert-v1.0-small/train.csv', first)
    assert mismatch['reason'] == (
      "Frontal/Lateral: 'Lateral', but the file name "
      "'CheXpert-v1.0-small/train/patient99996/study1/view1_frontal.jpg' is frontal")
    no_view = rejects['train/patient99997/study1/view1']
    assert (no_view['file'], no_view['row']) == ('CheXpert-v1.0-small/train.csv', first + 1)
    assert no_view['reason'].startswith(
      "Path: 'CheXpert-v1.0-small/train/patient99997/study1/view1.jpg' names no view")


def test_the_build_summary_says_how_many_films_of_each_split_were_left_out(built_views,
                                                                           capsys):
  import json

  from data_prep import __main__ as cli
  src, out, _, _, (frontal, _) = built_views
  assert cli.main(['build', 'chexpert', '--manual_dir', src, '--data_dir', out,
                   '--config', 'frontal']) == 0  # finished: reused
  summary = json.loads(capsys.readouterr().out)
  assert summary['dataset_dir'] == frontal
  assert summary['counts'] == {'train': N - 3, 'val': 1, 'test': 2}
  assert summary['filtered_by_view'] == {'train': 4, 'val': 1, 'test': 1}
  assert summary['num_rejects'] == 11


def test_the_view_is_the_file_names_in_every_split():
  from data_prep.chexpert import chexpert_dataset_builder as cx
  assert [cx.image_view(p) for p in (
    'CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg',
    'CheXpert/test/patient64741/study1/view1_frontal.jpg', 'test/p/s/view1.jpg',
    'test/p/s/view1_oblique.jpg')] == ['Lateral', 'Frontal', None, None]
  assert cx.view_reject('train/p/s/view1_frontal.jpg', 'Frontal') is None
  assert cx.view_reject('train/p/s/view1_frontal.jpg', '') is None  # blank: the name says
  assert cx.view_reject('test/p/s/view2_lateral.jpg', None) is None  # test: no column
  assert 'is lateral' in cx.view_reject('train/p/s/view2_lateral.jpg', 'Frontal')


def test_main_builds_a_mixture_component_from_its_manual_dir(chexpert_src, tmp_path, capsys):
  # README: a component's `builder` + `builder_kwargs` build its dir when it is missing;
  # for a real dataset that is the manual_dir build, published as `dir` itself.
  import main as main_lib
  from configs import classifier
  from data_prep import __main__ as cli
  config = classifier.get_config('size=tiny')
  config.data.dir, config.data.builder = '', ''
  dest = str(tmp_path / 'data' / 'chexpert')
  config.data.mixture.cx = dict(dir=dest, builder='chexpert', builder_kwargs=dict(
    manual_dir=chexpert_src[0], config='frontal'))
  main_lib.ensure_data(config)
  manifest = build_lib.read_manifest(dest)
  assert manifest['dataset'] == 'chexpert' and manifest['counts']['train'] > 0
  assert manifest['config'] == 'frontal'
  main_lib.ensure_data(config)  # reused
  config.data.mixture.cx.dir = str(tmp_path / 'other')
  config.data.mixture.cx.builder_kwargs.manual_dir = str(tmp_path / 'nothing')
  with pytest.raises(ManualDirError, match='not a directory or is empty'):
    main_lib.ensure_data(config)
  config.data.mixture.cx.builder_kwargs = dict(manual_dir=chexpert_src[0], sed=1)
  with pytest.raises(ValueError, match=r"config\.data\.mixture\.cx: chexpert: unknown "
                                       r"builder_kwargs \['sed'\]"):
    main_lib.ensure_data(config)
  assert not os.path.exists(str(tmp_path / 'other'))
  # The CLI on a finished build with another --num_shards says it reused it.
  data_dir = str(tmp_path / 'cli')
  assert cli.main(['build', 'chexpert', '--manual_dir', chexpert_src[0], '--data_dir',
                   data_dir]) == 0
  capsys.readouterr()
  assert cli.main(['build', 'chexpert', '--manual_dir', chexpert_src[0], '--data_dir',
                   data_dir, '--num_shards', '2']) == 0
  assert "note: reused the finished build there, with {'train': 1, 'val': 1} shards" in (
    capsys.readouterr().err)
