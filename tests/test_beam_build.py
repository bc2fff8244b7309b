"""The Beam path of the dataset builders gives the dataset the local path gives.

Builds the demo and the CheXpert, NIH ChestX-ray14 and VinDr-CXR fixtures (the builder
tests' own writers) locally and with `--beam_runner DirectRunner` on 2 worker processes,
and compares them byte for byte: records (same ids, same bytes), rejects.jsonl,
manifest.json, dataset_info.json, tokenizer and terms files.

apache-beam's pins (protobuf<7, pyarrow<26) conflict with requirements.txt, so the main
venv has no Beam and those tests are skipped there. Run them in the Beam venv:

    bash launch/beam_venv.sh
    .beam-venv/bin/python -m pytest -q tests/test_beam_build.py
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from data_prep import build as build_lib
from data_prep.demo import demo_dataset_builder
from tests import data_prep_fixtures as fx
from tests import test_data_prep_chexpert, test_data_prep_nih

needs_beam = pytest.mark.skipif(
  importlib.util.find_spec('apache_beam') is None,
  reason='apache_beam is not importable (its pins conflict with requirements.txt); run '
         'bash launch/beam_venv.sh && .beam-venv/bin/python -m pytest tests/test_beam_build.py')
TWO_WORKERS = '--direct_num_workers=2 --direct_running_mode=multi_processing'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def beam_kwargs() -> dict:
  from apache_beam.options.pipeline_options import PipelineOptions
  return {'beam_runner': 'DirectRunner', 'beam_options': PipelineOptions(TWO_WORKERS.split())}


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
def test_chexpert_through_the_cli(tmp_path):
  src = tmp_path / 'src'
  test_data_prep_chexpert.write_source(src)
  local, manifest = fx.build('chexpert', str(src), str(tmp_path / 'local'))
  assert manifest['num_rejects'] == 6
  proc = subprocess.run(
    [sys.executable, '-m', 'data_prep', 'build', 'chexpert', '--manual_dir', str(src),
     '--data_dir', str(tmp_path / 'beam'), '--beam_runner', 'DirectRunner',
     '--beam_options', TWO_WORKERS], capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  beam = json.loads(proc.stdout[proc.stdout.index('{'):])['dataset_dir']
  fx.assert_same_dataset(local, beam)


@needs_beam
def test_nih_chest_xray14(tmp_path):
  src = str(tmp_path / 'src')
  test_data_prep_nih.write_source(src)
  local, manifest = fx.build('nih_chest_xray14', src, str(tmp_path / 'local'))
  assert manifest['num_rejects'] == 7
  beam, _ = fx.build('nih_chest_xray14', src, str(tmp_path / 'beam'), **beam_kwargs())
  fx.assert_same_dataset(local, beam)
