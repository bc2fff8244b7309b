"""CheXpert builder on a fixture in the publisher's layout (real CSV rows from the
torchxrayvision wheel), with planted bad records."""
import os
import subprocess
import sys

import pytest

from data_prep import build as build_lib
from data_prep.builder import ManualDirError
from tests import data_prep_fixtures as fx

N = 12  # real rows


def write_source(root) -> tuple[list[str], list[list[str]]]:
  """Writes the fixture under root (the folder holding CheXpert-v1.0-small/); returns the
  CSV header and the N good rows."""
  header, rows = fx.txv_rows('chexpert_train.csv.gz', N)
  bad = [list(r) for r in rows[:6]]
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


def test_rerun_is_a_no_op(built, chexpert_src):
  path, _ = built
  stamp = {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)}
  again = build_lib.build('chexpert', os.path.dirname(os.path.dirname(path)),
                          manual_dir=chexpert_src[0])
  assert again == path
  assert {f: os.path.getmtime(os.path.join(path, f)) for f in os.listdir(path)} == stamp


def test_wrong_manual_dir_names_the_expected_file(tmp_path):
  for missing in (tmp_path / 'nonexistent', tmp_path, None):  # tmp_path is empty here
    with pytest.raises(ManualDirError, match='not a directory or is empty'):
      build_lib.build('chexpert', str(tmp_path / 'out'), manual_dir=missing and str(missing))
  (tmp_path / 'CheXpert-v1.0-small').mkdir()
  with pytest.raises(ManualDirError, match=r'CheXpert-v1.0-small/train.csv'):
    build_lib.build('chexpert', str(tmp_path / 'out'), manual_dir=str(tmp_path))
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
  with pytest.raises(ValueError, match="chexpert: no config 'frontal'; it has none"):
    build_lib.build('chexpert', str(tmp_path), manual_dir=str(tmp_path), config='frontal')
  with pytest.raises(ValueError, match="mimic_cxr: no config 'frontl'; its configs: default, "
                     'frontal'):
    build_lib.build('mimic_cxr', str(tmp_path), manual_dir=str(tmp_path), config='frontl')


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
  path = str(tmp_path / 'out/chexpert/1.0.0')
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
  assert not os.path.exists(tmp_path / 'out2/chexpert/1.0.0')
