"""config.data.worker_processes: batches made in Grain worker processes are the batches
made in the training process, their iterator state resumes with any number of workers,
and a SIGTERM to the whole process group (SLURM's preemption) still saves a checkpoint."""
import importlib
import json
import multiprocessing
import os
import signal
import subprocess
import time

import cloudpickle
import numpy as np
import pytest

from bench import kill_resume
from radjax import run as run_lib
from radjax.core import checkpoint as checkpoint_lib
from radjax.data import pipeline
from radjax.train import state as state_lib
from tests.conftest import build_experiment, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _same(got: dict, want: dict):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _in_process_batches(data_dir: str, n: int):
  """(experiment, train dataset, its first n batches read in this process, that
  iterator's state after 4 of them)."""
  config = tiny_config(data_dir)
  config.data.augment = True  # the per-example rng too
  exp = build_experiment(config)
  ds = pipeline.train_dataset(config, exp.task.processor, 'train')
  inproc = pipeline.make_iterator(ds, 0)
  want = [next(inproc) for _ in range(4)]
  state = inproc.get_state()
  return exp, ds, want + [next(inproc) for _ in range(n - 4)], state


def test_worker_batches_are_the_in_process_ones_and_resume_across_counts(demo_data, tmp_path):
  exp, ds, want, state_at_4 = _in_process_batches(demo_data, 7)
  two = pipeline.make_iterator(ds, 0, worker_processes=2)
  try:
    for i in range(4):
      _same(next(two), want[i])
    # The in-process iterator's state also carries its RecordLog (worker processes keep
    # their own); the batch index is what both resume from.
    assert two.get_state() == {'next_index': 4} and state_at_4['next_index'] == 4
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 2, use_async=False)
    ckpt.save(4, exp.state, two, force=True)
  finally:
    two.close()
  # The workers stack into shared memory on a copy: here batches stay plain arrays.
  assert type(next(pipeline.make_iterator(ds, 0))['images']) is np.ndarray
  abstract = state_lib.abstract_state(exp.state_shardings, exp.state)
  # Saved with two workers: restored in-process, and with one worker.
  for processes in (0, 1):
    it = pipeline.make_iterator(ds, 0, worker_processes=processes)
    try:
      ckpt.restore(4, abstract, it)
      for i in range(4, 7):
        _same(next(it), want[i])
    finally:
      it.close()


def test_workers_leave_a_sigterm_to_the_trainer(demo_data):
  """SLURM signals every process of the job: a worker that died of it would fail the
  trainer's next batch, before the trainer could save its preemption checkpoint."""
  _, ds, want, _ = _in_process_batches(demo_data, 10)
  it = pipeline.make_iterator(ds, 0, worker_processes=2)
  try:
    _same(next(it), want[0])
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    for w in workers:
      os.kill(w.pid, signal.SIGTERM)
    time.sleep(2)
    for i in range(1, 10):  # past what the workers had made before the signal
      _same(next(it), want[i])
  finally:
    it.close()
  assert not multiprocessing.active_children()  # closing the iterator stops them


@pytest.mark.parametrize('recipe', ['demo:size=micro', 'demo:size=micro,task=lm',
                                    'radvlm:size=micro', 'classifier:size=micro',
                                    'vqgan:size=micro'])
def test_recipe_datasets_reach_a_worker_whole(recipe, demo_data):
  """Grain sends the dataset to each worker with cloudpickle: every recipe's processors
  must survive it and give the same batches there."""
  name, arg = recipe.split(':')
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  config.data.dir = demo_data
  for comp in config.data.get('mixture', {}).values():
    comp.dir = demo_data
  ds = pipeline.train_dataset(config, run_lib.make_task(config).processor, 'train', 0, 1)
  there = cloudpickle.loads(cloudpickle.dumps(ds))
  for i in (0, 5):
    _same(there[i], ds[i])


def test_packing_with_worker_processes_names_both_knobs(demo_data):
  config = tiny_config(demo_data)
  config.data.pack = True
  exp = build_experiment(config)
  ds = pipeline.train_dataset(config, exp.task.processor, 'train')
  with pytest.raises(ValueError, match=r'worker_processes=2 with config.data.pack=True'):
    pipeline.make_iterator(ds, 0, worker_processes=2)


def test_sigterm_to_the_process_group_saves_a_checkpoint_and_stops_the_workers(
    demo_data, tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = kill_resume.command(demo_data, workdir) + [
      '--config.data.worker_processes=2', '--config.train.num_steps=100000',
      '--config.train.checkpoint_every=100000', '--config.train.eval_every=0',
      '--config.train.log_every=1']
  proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    assert kill_resume.wait_for(proc, lambda: len(kill_resume.losses(workdir)) >= 3), \
        proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its workers, as SLURM does
    out, _ = proc.communicate(timeout=300)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 0, out[-3000:]
  assert 'preempted at step' in out
  steps = checkpoint_lib.Checkpointer(workdir, 1, use_async=False).manager.all_steps()
  assert list(steps) == [max(kill_resume.losses(workdir))], (steps, out[-2000:])
  with open(os.path.join(workdir, 'checkpoints', str(steps[0]), 'data',
                         'process_0-of-1.json')) as f:
    assert json.load(f) == {'next_index': steps[0]}
  deadline = time.time() + 30
  while time.time() < deadline:  # the workers go with the trainer
    try:
      os.killpg(proc.pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.5)
  else:
    pytest.fail('worker processes outlived the trainer')
