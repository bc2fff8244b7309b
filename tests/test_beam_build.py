"""The Beam path of the dataset builders gives the dataset the local path gives.

Builds the demo and the CheXpert and NIH ChestX-ray14 fixtures (the builder tests' own
writers; VinDr-CXR's is in tests/test_data_prep_vindr.py) locally and on Beam with 2
worker processes, through `python -m data_prep build` and TFDS's `tfds build`, and
compares them byte for byte: records (same ids, same bytes), rejects.jsonl,
manifest.json, dataset_info.json, tokenizer and terms files.

The runner is FnApiRunner: what `--beam_runner DirectRunner` runs a batch pipeline on
when it cannot use Prism. Beam 2.77's DirectRunner first tries Prism, downloading its
binary from GitHub; tests download nothing.

apache-beam's pins (protobuf<7, pyarrow<26) conflict with requirements.txt, so the main
venv has no Beam and those tests are skipped there. Run them in the Beam venv:

    bash launch/beam_venv.sh
    .beam-venv/bin/python -m pytest -q tests/test_beam_build.py
"""
import importlib.util
import io
import json
import os
import pickle  # as Beam ships a builder to its workers; no data is pickled
import subprocess
import sys

import pytest
from PIL import Image

from data_prep import build as build_lib
from data_prep.demo import demo_dataset_builder
from tests import data_prep_fixtures as fx
from tests import test_data_prep_chexpert, test_data_prep_nih

needs_beam = pytest.mark.skipif(
  importlib.util.find_spec('apache_beam') is None,
  reason='apache_beam is not importable (its pins conflict with requirements.txt); run '
         'bash launch/beam_venv.sh && .beam-venv/bin/python -m pytest tests/test_beam_build.py')
RUNNER = 'FnApiRunner'
TWO_WORKERS = '--direct_num_workers=2 --direct_running_mode=multi_processing'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def beam_kwargs() -> dict:
  from apache_beam.options.pipeline_options import PipelineOptions
  return {'beam_runner': RUNNER, 'beam_options': PipelineOptions(TWO_WORKERS.split())}


def test_label_keys_do_not_depend_on_the_hash_seed():
  """Beam workers are other processes with other hash seeds: a label dict filled from a
  set would give the same Example in other bytes there."""
  code = ('import json; from data_prep.nih_chest_xray14 import nih_chest_xray14_dataset_builder '
          'as nih; from data_prep.vindr_cxr import vindr_cxr_dataset_builder as vindr; '
          "print(json.dumps([list(nih.parse_labels('Mass|Effusion')), "
          'list(vindr.box_labels([]))]))')
  outs = set()
  for seed in ('1', '2'):
    env = dict(os.environ, PYTHONHASHSEED=seed)
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=True)
    outs.add(proc.stdout.strip().splitlines()[-1])
  assert len(outs) == 1, outs
  nih_keys, vindr_keys = json.loads(outs.pop())
  assert nih_keys[:3] == ['Atelectasis', 'Cardiomegaly', 'Pleural Effusion']
  assert vindr_keys[0] == 'Enlarged Cardiomediastinum' and vindr_keys[-1] == 'No Finding'


def test_builders_write_array_record_only(tmp_path):
  cls = build_lib.builder_class('chexpert')
  # Also when TFDS passes nothing (`tfds build`), whose own default is TFRecord.
  assert cls(data_dir=str(tmp_path)).info.file_format.value == 'array_record'
  with pytest.raises(ValueError, match="file_format tfrecord: .* 'array_record' only"):
    cls(data_dir=str(tmp_path), file_format='tfrecord')


def test_builder_imported_by_tfds_build_unpickles_from_data_prep(tmp_path, monkeypatch):
  """What Beam workers get from a `tfds build data_prep/chexpert` process."""
  monkeypatch.syspath_prepend(os.path.join(ROOT, 'data_prep'))
  short = importlib.import_module('chexpert.chexpert_dataset_builder')
  try:
    builder = short.Builder(data_dir=str(tmp_path))
    again = pickle.loads(pickle.dumps(builder))
  finally:
    for name in ('chexpert', 'chexpert.chexpert_dataset_builder'):
      sys.modules.pop(name, None)
  assert type(again) is build_lib.builder_class('chexpert')
  assert again.data_dir == builder.data_dir and again.name == 'chexpert'


@needs_beam
@pytest.mark.slow  # ~25 s; the CheXpert and NIH tests below run the same Beam path fast
def test_demo(tmp_path):
  config = demo_dataset_builder.DemoConfig(name='tiny', num_train=16, num_val=4, num_test=4,
                                           vocab_size=300)

  def make_builder(data_dir):
    return demo_dataset_builder.Builder(data_dir=data_dir, config=config)

  local, beam = str(tmp_path / 'local'), str(tmp_path / 'beam')
  manifest = build_lib.build_into(local, make_builder)
  assert manifest['counts'] == {'train': 16, 'val': 4, 'test': 4}
  assert sum(manifest['finding_frequencies']['train'].values()) >= 16
  build_lib.build_into(beam, make_builder, **beam_kwargs())
  fx.assert_same_dataset(local, beam)


@needs_beam
@pytest.mark.parametrize('short_side', [None, 16])
def test_chexpert_through_the_cli(tmp_path, short_side):
  """With --max_short_side, Beam workers downscale as the local build does."""
  src = tmp_path / 'src'
  test_data_prep_chexpert.write_source(src)
  local, manifest = fx.build('chexpert', str(src), str(tmp_path / 'local'),
                             max_short_side=short_side)
  assert manifest['num_rejects'] == 6
  if short_side:
    sides = [min(Image.open(io.BytesIO(e['images'][0]['data'])).size)
             for e in fx.examples(local, 'train')]
    assert max(sides) == short_side, sides
  proc = subprocess.run(
    [sys.executable, '-m', 'data_prep', 'build', 'chexpert', '--manual_dir', str(src),
     '--data_dir', str(tmp_path / 'beam'), '--beam_runner', RUNNER, '--beam_options',
     TWO_WORKERS] + (['--max_short_side', str(short_side)] if short_side else []),
    capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  beam = json.loads(proc.stdout[proc.stdout.index('{'):])['dataset_dir']
  fx.assert_same_dataset(local, beam)


@needs_beam
def test_a_split_every_record_of_which_is_rejected_is_left_out_as_locally(tmp_path):
  src = tmp_path / 'src'
  header, rows = test_data_prep_chexpert.write_source(src)
  valid = [list(r) for r in rows[:2]]
  for i, r in enumerate(valid):
    r[0] = f'CheXpert-v1.0-small/valid/patient7777{i}/study1/view1_frontal.jpg'  # not there
  fx.write_csv(str(src / 'CheXpert-v1.0-small/valid.csv'), header, valid)
  local, manifest = fx.build('chexpert', str(src), str(tmp_path / 'local'))
  assert manifest['empty_splits'] == ['val'] and manifest['rejects_by_split']['val'] == 2
  beam, _ = fx.build('chexpert', str(src), str(tmp_path / 'beam'), beam_runner=RUNNER)
  fx.assert_same_dataset(local, beam)


@needs_beam
def test_nih_chest_xray14_through_tfds_build(tmp_path):
  """`tfds build data_prep/NAME`: TFDS imports the builder as NAME.NAME_dataset_builder,
  with data_prep/ on sys.path in its own process only; Beam workers must still load it."""
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  if not os.path.exists(tfds_cli) or importlib.util.find_spec('mlcroissant') is None:
    pytest.skip('no tfds command with mlcroissant beside this Python: run launch/beam_venv.sh')
  src = str(tmp_path / 'src')
  test_data_prep_nih.write_source(src)
  local, manifest = fx.build('nih_chest_xray14', src, str(tmp_path / 'local'))
  assert manifest['num_rejects'] == 7
  options = f"runner={RUNNER},{TWO_WORKERS.replace(' ', ',').replace('--', '')}"
  proc = subprocess.run(
    [tfds_cli, 'build', 'data_prep/nih_chest_xray14', '--manual_dir', src,
     '--data_dir', str(tmp_path / 'beam'), f'--beam_pipeline_options={options}'],
    capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  beam = str(tmp_path / 'beam' / 'nih_chest_xray14' / '1.0.0')
  assert 'array_record' in ' '.join(os.listdir(beam))  # not TFDS's default TFRecord
  # moduleName: nih_chest_xray14.nih_chest_xray14_dataset_builder, as TFDS imported it.
  fx.assert_same_dataset(local, beam, info_may_differ=('moduleName',))
