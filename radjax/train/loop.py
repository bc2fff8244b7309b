"""The training loop: resume, step, log one step late, checkpoint, evaluate."""
import json
import os
import time

import jax
import numpy as np
from absl import logging
from clu import periodic_actions

from radjax.core import checkpoint as checkpoint_lib
from radjax.core import workdir as workdir_lib
from radjax.data import mixture, pipeline
from radjax.eval import evaluators as evaluators_lib
from radjax.train import examples_seen, setup, writers
from radjax.train import state as state_lib


class NonFiniteLossError(RuntimeError):
  """Loss, gradient norm or the state became NaN/inf; the state is saved for inspection."""


def restore_or_keep(exp, ckpt: checkpoint_lib.Checkpointer, data_iterator=None):
  """Resume order: latest checkpoint in the workdir, else the fresh state."""
  if ckpt.latest_step() is None:
    return exp.state, 0
  target = state_lib.abstract_state(exp.state_shardings, exp.state)
  # The fresh state goes before the restored one arrives: both held at once, a resume
  # needed twice the state's memory (a run that trained in memory could fail to resume).
  for leaf in jax.tree.leaves(exp.state):
    if isinstance(leaf, jax.Array) and not leaf.is_deleted():
      leaf.delete()
  exp.state = None
  # Skips damaged ones, kept aside.
  state, step = ckpt.restore_latest(target, data_iterator)
  logging.info('resuming from step %d in %s', step, ckpt.directory)
  return state, step


def train(config, workdir: str, task, devices=None) -> dict:
  """Runs (or resumes) `task` (radjax/tasks) to config.train.num_steps; returns the last
  eval metrics. One run at a time in a workdir (workdir.training_lock)."""
  with workdir_lib.training_lock(workdir):
    return _train(config, workdir, task, devices)


def _train(config, workdir: str, task, devices=None) -> dict:
  tc = config.train
  workdir_lib.check_resumable(config, workdir)  # before anything is written
  ckpt = checkpoint_lib.Checkpointer(workdir, tc.keep_checkpoints, tc.async_checkpoint,
                                     handle_sigterm=True)
  latest = ckpt.latest_step()
  finished = latest is not None and latest >= tc.num_steps
  changed = workdir_lib.knob_changes(config, workdir)
  data_changed = workdir_lib.knob_changes(config, workdir, workdir_lib.DATA_KNOBS)
  if data_changed and not finished:
    logging.warning("resuming on other data (%s): the stream goes on at the checkpoint's "
                    'batch index in it', '; '.join(data_changed))
  if finished:
    logging.info('the workdir holds step %d, train.num_steps=%d: nothing to train', latest,
                 tc.num_steps)
  elif changed:
    logging.warning('resuming with another learning-rate schedule (%s): it is re-derived from '
                    'the new values, so the lr at the resumed step jumps; a run meant to end '
                    'at N steps sets train.num_steps=N from its start', '; '.join(changed))
  # The data's knobs (each mixture component's dir is there, ...) before the model is
  # built and its init_from weights read: the task needs none of it (a dry run reads no
  # data), the stream below does.
  mixture.components(config)
  # init_from weights only matter for a fresh run; a resumed one restores everything.
  fresh = latest is None
  exp = setup.build(config, task, devices, pretrained=fresh)
  try:
    workdir_lib.check_state(config, workdir, state_lib.abstract_state(exp.state_shardings,
                                                                      exp.state), fresh,
                            finished)
  except workdir_lib.WorkdirError:
    ckpt.close()  # its async machinery, before the error leaves
    raise
  # The processor for each mixture component's tasks (or config.data.tasks).
  train_ds = pipeline.train_dataset(config, task.processor, config.data.train_split)
  sources = mixture.names(config)
  processes = config.data.get('worker_processes', 0)
  data_iter = pipeline.make_iterator(train_ds, config.data.worker_threads, processes)
  state, start = restore_or_keep(exp, ckpt, data_iter)
  if start >= tc.num_steps and not _eval_lost(tc, workdir, start, config.eval.split):
    ckpt.close()  # a finished run (a pre-stage, a rerun) writes nothing more, not even
    if hasattr(data_iter, 'close'):  # config.json: its knobs would describe no training
      data_iter.close()
    return {}
  workdir_lib.save_config(config, workdir)
  if processes:
    data_iter.start_prefetch()  # the workers start while the rest is set up
  # Records stepped over are counted where they are read; worker processes keep theirs.
  counted_ds = None if processes else train_ds
  exp.state = None  # the restored state replaces it; don't hold two copies

  writer, progress_writer = writers.make_writers(workdir, start)
  if start == 0:
    writer.write_hparams(_flat_hparams(config))
  progress = periodic_actions.ReportProgress(num_train_steps=tc.num_steps,
                                             writer=progress_writer, every_steps=tc.log_every)
  evaluators = evaluators_lib.make(exp, config.eval.split)
  profile = _Trace(workdir, tc.get('profile_first_step', 0), tc.get('profile_steps', 0))

  with exp.context():
    train_step = setup.jit_train_step(exp)

  pending = None  # (step, device metrics, host extras, logged?, seen's reader) of a step
  last_eval = {}
  seen = examples_seen.Seen(exp.mesh, exp.rules, sources)  # since the last log
  try:
    if _eval_lost(tc, workdir, start, config.eval.split):  # to a kill: redo it
      last_eval = _evaluate(evaluators, writer, state, start, {}, config.eval.split)
    t_log, steps_since_log = time.time(), 0
    for step in range(start + 1, tc.num_steps + 1):
      host_batch = next(data_iter)
      # Host-only keys (source, truncated) are read here; to_global sends only the task's.
      extras = pipeline.host_scalars(host_batch, counted_ds)
      batch = pipeline.to_global(host_batch, exp.batch_shardings)
      with exp.context():
        state, metrics = train_step(state, batch)
      steps_since_log += 1
      seen.add(host_batch, batch)
      # Read the previous step's metrics now: the device is busy with this one.
      if pending is not None:
        _log(writer, pending[0], _read(pending, ckpt, state, workdir))
      logged, seen_read = step % tc.log_every == 0 or step == tc.num_steps, None
      if logged:
        dt = max(time.time() - t_log, 1e-9)
        seen_read = seen.take(dt)
        extras['train/steps_per_sec'] = steps_since_log / dt
        t_log, steps_since_log = time.time(), 0
      pending = (step, metrics, extras, logged, seen_read)
      progress(step)
      profile(step)

      # Asked every step: with several processes the preemption service picks the step at
      # which all of them stop, and a process that skipped asking at it would run on.
      preempted = ckpt.reached_preemption(step)
      if step % tc.checkpoint_every == 0 or step == tc.num_steps or preempted:
        pending = _log_now(writer, pending, ckpt, state, workdir)  # checked before saved
        try:
          ckpt.save(step, state, data_iter, force=True)
        except checkpoint_lib.NonFiniteStateError:  # params overflowed, the loss did not yet
          _stop_nonfinite(f'the state became NaN/inf by step {step} (its loss was finite)',
                          ckpt, state, workdir)
      if preempted:
        ckpt.wait()
        logging.warning('preempted at step %d; checkpoint saved', step)
        break
      if _eval_due(tc, step):
        scalars = _read(pending, ckpt, state, workdir) if pending else {}
        pending = None
        t_eval = time.time()
        last_eval = _evaluate(evaluators, writer, state, step, scalars, config.eval.split)
        t_log += time.time() - t_eval  # the steps' rates count training time only
    if pending is not None:
      _log(writer, pending[0], _read(pending, ckpt, state, workdir))
  finally:  # an error still lets queued checkpoint writes finish
    profile.close()
    ckpt.wait()
    ckpt.close()
    # Stop Grain's read threads (they read ahead of an endless stream) with the run.
    if hasattr(data_iter, 'close'):
      data_iter.close()
    writer.flush()
  return last_eval


def _eval_lost(tc, workdir: str, step: int, split: str) -> bool:
  """The restored step was due an eval that its metrics do not hold (killed in it)."""
  return bool(step) and _eval_due(tc, step) and not writers.eval_logged(
      writer_path(workdir), step, split)


class _Trace:
  """A jax.profiler trace from the dispatch of step `first` to that of step first + n
  (the steps between ran whole in it: the loop waits for each step's predecessor), in
  <workdir>/plugins/profile, or <workdir>/process_<i>/plugins/profile when there are
  several processes; close() ends one the run outlived."""

  def __init__(self, workdir: str, first: int, n: int):
    # Processes that share a host and start in the same second would write one run
    # directory's <hostname>.xplane.pb over each other.
    if jax.process_count() > 1:
      workdir = os.path.join(workdir, f'process_{jax.process_index()}')
    self.workdir, self.first, self.n, self.on = workdir, first, n, False

  def __call__(self, step: int) -> None:
    if step == self.first and self.n:
      jax.profiler.start_trace(self.workdir)
      self.on = True
      logging.info('profiling steps %d-%d into %s/plugins/profile', step + 1, step + self.n,
                   self.workdir)
    elif self.on and step >= self.first + self.n:
      self.close()

  def close(self) -> None:
    if self.on:
      jax.profiler.stop_trace()
      self.on = False


def _eval_due(tc, step: int) -> bool:
  return bool(tc.eval_every and step % tc.eval_every == 0) or step == tc.num_steps


def writer_path(workdir: str) -> str:
  return os.path.join(workdir, 'metrics.jsonl')


def _evaluate(evaluators, writer, state, step: int, scalars: dict, split: str) -> dict:
  metrics = evaluators_lib.run_all(evaluators, state.params, step, writer, split=split)
  _log(writer, step, {**scalars, **metrics})
  logging.info('step %d eval: %s', step, json.dumps(metrics))
  return metrics


def _log_now(writer, pending, ckpt, state, workdir):
  """Checks (non-finite: raises) and logs the step about to be checkpointed, so that a
  checkpoint never exists without its step's row in metrics.jsonl. Returns None."""
  if pending is not None:
    _log(writer, pending[0], _read(pending, ckpt, state, workdir))
  return None


def _log(writer, step, scalars):
  if scalars:
    writer.write_scalars(step, scalars)


def _read(pending, ckpt, state, workdir) -> dict:
  """Checks the loss of a finished step; returns its scalars if it is a logged step."""
  step, metrics, extras, log, seen_read = pending
  loss = float(metrics['loss'])
  if not np.isfinite(loss) or not np.isfinite(float(metrics['grad_norm'])):
    _stop_nonfinite(f'non-finite loss ({loss}) or grad norm at step {step}', ckpt, state,
                    workdir)
  if not log:
    return {}
  scalars = {f'train/{k}': float(v) for k, v in jax.device_get(metrics).items()}
  # extras carry their own prefix (train/, data/)
  return {**scalars, **extras, **(seen_read() if seen_read else {})}


def _stop_nonfinite(what: str, ckpt, state, workdir: str):
  """Saves the state for inspection (never as a checkpoint) and stops the run."""
  path = os.path.join(os.path.abspath(workdir), 'nonfinite_state')
  ckpt.wait()
  checkpoint_lib.save_for_inspection(path, state)
  raise NonFiniteLossError(f'{what}; the state after it is saved in {path} for inspection. '
                           'Lower config.optim.lr or check the data.')


def _flat_hparams(config) -> dict:
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f'{prefix}{k}'
      if hasattr(v, 'items'):
        walk(key + '.', v)
      elif isinstance(v, (int, float, str, bool)):
        out[key] = v
  walk('', config)
  return out
