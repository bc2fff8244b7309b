"""End-to-end: main's train runs in-process on the demo data; kill + resume is exact;
the Grain iterator restored from a checkpoint continues the same stream."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from radjax import run as run_lib
from radjax.core import checkpoint as checkpoint_lib
from radjax.data import pipeline
from radjax.train import state as state_lib
from tests.conftest import build_experiment, tiny_config, train_killed_then_resumed


def read_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}


# Slow (~90 s): tests/test_lm_task.py's killed-run resume and the restored-iterator
# test below keep the same path in CI.
@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses(demo_data, tmp_path, monkeypatch):
  config = tiny_config(demo_data)
  config.data.worker_threads = 0
  config.train.num_steps = 8
  config.train.checkpoint_every = 4
  full_dir, cut_dir = str(tmp_path / 'full'), str(tmp_path / 'cut')
  run_lib.main(config, full_dir, 'train')
  full = read_losses(full_dir)
  assert sorted(full) == list(range(1, 9))

  # The process dies fetching step 6's batch; the last checkpoint is step 4's.
  train_killed_then_resumed(config, cut_dir, monkeypatch, kill_at_batch=6)
  resumed = read_losses(cut_dir)
  assert resumed == full  # exact, float for float, and no duplicated steps
  assert full[8] < full[1]
  # The host-side data scalars are logged under data/, never sent to the step.
  with open(os.path.join(full_dir, 'metrics.jsonl')) as f:
    row = next(r for r in map(json.loads, f) if 'train/loss' in r)
  assert row['data/dropped_too_long'] == 0 and 0 <= row['data/truncated'] <= 1
  assert 'train/truncated_frac' not in row and 'train/truncated' not in row


def test_restored_iterator_yields_the_same_batches(demo_data, tmp_path):
  config = tiny_config(demo_data)
  exp = build_experiment(config)
  ds = pipeline.train_dataset(config, exp.task.processor, 'train')
  it = pipeline.make_iterator(ds, 0)
  for _ in range(3):
    next(it)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 2, use_async=False)
  ckpt.save(3, exp.state, it, force=True)
  expected = [next(it) for _ in range(2)]
  fresh = pipeline.make_iterator(pipeline.train_dataset(config, exp.task.processor, 'train'),
                                 0)
  ckpt.restore(3, state_lib.abstract_state(exp.state_shardings, exp.state), fresh)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_eval_mode_writes_metrics_and_predictions(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.train.num_steps = 2
  workdir = str(tmp_path / 'w')
  run_lib.main(config, workdir, 'train')
  metrics = run_lib.main(config, workdir, 'eval')
  assert np.isfinite(metrics['eval/val_loss'])
  exp, step = run_lib.load_trained(config, workdir)
  assert step == 2 and exp.state.opt_state is None  # eval restores params only
  for key in ('finding_micro_f1', 'clinical_f1_micro_14', 'BLEU-4', 'ROUGE-L', 'CIDEr',
              'num_empty_generations'):
    assert f'eval/{key}' in metrics, key
  with open(os.path.join(workdir, 'eval', '2', 'predictions.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == config.eval.num_generate
  assert {'id', 'prompt', 'generated', 'reference', 'BLEU-4', 'ROUGE-L', 'CIDEr',
          'labels_generated', 'labels_reference', 'clinical_agreement_14',
          'predicted_findings', 'true_findings'} <= set(rows[0])
  from radjax.data import instructions
  assert rows[0]['prompt'] == instructions.REPORT_INSTRUCTIONS[0]
  assert all(0 <= r['clinical_agreement_14'] <= 1 for r in rows)
  for key in ('finding_cardiomegaly/f1', 'finding_nodule/recall', 'finding_macro_f1',
              'finding_baseline_all_positive_micro_f1'):
    assert f'eval/{key}' in metrics, key
  # Another split: its own folder and names; the val results stay as they were.
  val_json = open(os.path.join(workdir, 'eval', '2', 'metrics.json')).read()
  config.eval.split = 'test'
  test = run_lib.main(config, workdir, 'eval')
  assert 'eval/test_loss' in test and 'eval/test_finding_macro_f1' in test
  assert not [k for k in test if k.startswith('eval/val_')]
  with open(os.path.join(workdir, 'eval', '2-test', 'metrics.json')) as f:
    assert json.load(f)['eval/test_loss'] == test['eval/test_loss']
  with open(os.path.join(workdir, 'eval', '2-test', 'predictions.jsonl')) as f:
    assert json.loads(f.readline())['id'].startswith('demo-test-')
  assert open(os.path.join(workdir, 'eval', '2', 'metrics.json')).read() == val_json


def test_scalars_of_another_split_carry_its_name():
  from radjax.eval import evaluators
  assert evaluators.split_key('eval/val_loss', 'test') == 'eval/test_loss'
  assert evaluators.split_key('eval/labels_auc', 'test') == 'eval/test_labels_auc'


def test_nonfinite_loss_stops_with_a_clear_message(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.data.image_mean = (1e38, 1e38, 1e38)  # every pixel becomes -inf
  config.train.checkpoint_every = 1  # the NaN step is a checkpoint step
  with pytest.raises(Exception, match='non-finite loss'):
    run_lib.main(config, str(tmp_path / 'nan'), 'train')
  assert os.path.isdir(tmp_path / 'nan' / 'nonfinite_state')
  # ... which never becomes a checkpoint a rerun would resume from.
  assert checkpoint_lib.Checkpointer(str(tmp_path / 'nan'), 3).latest_step() is None


def test_a_state_gone_nonfinite_under_a_finite_loss_stops_the_same_way(demo_data, tmp_path,
                                                                       monkeypatch):
  """The update after a step's finite loss overflows the params (lr 1e39 did): the save
  refuses the state, and the run stops as for a NaN loss (it was a traceback, with no
  nonfinite_state)."""
  config = tiny_config(demo_data)
  config.train.num_steps, config.train.checkpoint_every = 2, 1
  monkeypatch.setattr(checkpoint_lib, 'all_finite', lambda state: False)
  with pytest.raises(run_lib.loop.NonFiniteLossError,
                     match=r'the state became NaN/inf by step 1 \(its loss was finite\)'):
    run_lib.main(config, str(tmp_path / 'nan'), 'train')
  assert os.path.isdir(tmp_path / 'nan' / 'nonfinite_state')
  assert checkpoint_lib.Checkpointer(str(tmp_path / 'nan'), 3).latest_step() is None


def test_generate_mode_reports_on_image_files(demo_data, tmp_path, capsys, monkeypatch):
  from data_prep import writer
  from radjax.data import schema, source
  from radjax.eval.evaluators import answers
  config = tiny_config(demo_data)
  config.train.num_steps = 1
  workdir = str(tmp_path / 'g')
  run_lib.main(config, workdir, 'train')
  # A rerun of the finished run trains nothing, so it leaves config.json as it was (its
  # other lr described no training and became what eval and to-hf read).
  saved = open(os.path.join(workdir, 'config.json')).read()
  rerun = config.copy_and_resolve_references()
  rerun.optim.lr = 0.5
  assert run_lib.main(rerun, workdir, 'train') == {}
  assert open(os.path.join(workdir, 'config.json')).read() == saved
  ex = schema.decode(writer.read_records(source.split_files(demo_data, 'test')[0])[0])
  path = str(tmp_path / 'cxr.png')
  with open(path, 'wb') as f:
    f.write(ex['images'][0]['data'])
  reports = run_lib.main(config, workdir, 'generate', [path])
  assert len(reports) == 1 and isinstance(reports[0], str)
  assert f'== {path}' in capsys.readouterr().out
  # A colour photo of a film: the demo trains on gray 8-bit pixels (config.data.pixels
  # 'gray8', where a colour image is an error), and generation still reads it, in colour.
  colour = str(tmp_path / 'photo.jpg')
  Image.merge('RGB', [Image.open(path).convert('L').point(lambda v: min(255, v + d))
                      for d in (0, 20, 40)]).save(colour)
  assert config.data.pixels == 'gray8'
  fed, prompts = [], answers.Answerer.prompts
  monkeypatch.setattr(answers.Answerer, 'prompts',
                      lambda self, items: fed.append(prompts(self, items)) or fed[-1])
  assert len(run_lib.main(config, workdir, 'generate', [colour])) == 1
  (_, pixels), = fed
  planes = pixels['images'][0].reshape(-1, 3)  # 8-bit, a channel each, resized
  photo = np.asarray(Image.open(colour)).reshape(-1, 3)
  np.testing.assert_allclose(planes.mean(0), photo.mean(0), atol=0.5)  # not made gray
  with pytest.raises(ValueError, match='--images'):
    run_lib.main(config, workdir, 'generate', [])


def test_a_run_resumes_on_another_mesh_with_the_same_losses(demo_data, tmp_path, monkeypatch):
  """README ("Resuming"): a checkpoint restores into another mesh's shards. Killed after
  step 2 on data=8, resumed on fsdp=4 x tensor=2: the losses of an uninterrupted data=8
  run (to float32 rounding: the reductions are split otherwise)."""
  config = tiny_config(demo_data)
  config.data.worker_threads = 0
  config.train.num_steps, config.train.checkpoint_every = 4, 2
  full_dir, cut_dir = str(tmp_path / 'full'), str(tmp_path / 'cut')
  run_lib.main(config, full_dir, 'train')
  other = config.copy_and_resolve_references()
  other.mesh.data, other.mesh.fsdp, other.mesh.tensor = 1, 4, 2
  train_killed_then_resumed(config, cut_dir, monkeypatch, kill_at_batch=3,
                            resumed_config=other)
  full, resumed = read_losses(full_dir), read_losses(cut_dir)
  with open(os.path.join(cut_dir, 'metrics.jsonl')) as f:  # resumed at 3, not begun anew
    assert [r['step'] for r in map(json.loads, f) if 'train/loss' in r] == [1, 2, 3, 4]
  assert sorted(full) == [1, 2, 3, 4]
  np.testing.assert_allclose([resumed[s] for s in (3, 4)], [full[s] for s in (3, 4)],
                             rtol=1e-5)


def test_a_resume_holds_one_train_state_while_it_restores(demo_data, tmp_path, monkeypatch):
  """The state built for a resumed run is freed before the checkpoint's arrives: both held
  at once, a resume took twice the state's memory, so a run that trained within memory
  could fail to resume."""
  import gc

  import jax
  config = tiny_config(demo_data)
  config.data.worker_threads = 0
  config.train.num_steps = 1
  workdir = str(tmp_path / 'run')
  run_lib.main(config, workdir, 'train')
  held, restore = [], checkpoint_lib.Checkpointer.restore

  def measured(self, step, target, data_iterator=None):
    gc.collect()
    held.append((sum(a.nbytes for a in jax.live_arrays()),
                 sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(target)
                     if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))))
    return restore(self, step, target, data_iterator)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'restore', measured)
  config.train.num_steps = 2
  run_lib.main(config, workdir, 'train')
  [(live, state)] = held
  assert state > 10**6 and live < state // 10
  assert sorted(read_losses(workdir)) == [1, 2]
