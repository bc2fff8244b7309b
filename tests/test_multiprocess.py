"""Multi-controller runs on one machine: two `main.py` processes with 4 emulated CPU devices
each, joined by jax.distributed on 127.0.0.1, against one process with 8 devices.

All in the default (CI) set: about 5.5 minutes together on an idle 2-core machine (two
JAX processes compiling at once), the runs of the parity test shared as fixtures.
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from configs import demo
from radjax import run as run_lib
from radjax.core import checkpoint as checkpoint_lib
from radjax.core import distributed, watchdog
from radjax.data import pipeline
from radjax.train import writers
from tests.conftest import FAST_COMPILE, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _argv(data_dir: str, workdir: str) -> list[str]:
  """main.py for tiny_config (tests/conftest.py), which the in-process reference runs."""
  return [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro',
          '--workdir', workdir, f'--config.data.dir={data_dir}',
          f'--config.train.num_steps={STEPS}', '--config.train.checkpoint_every=2',
          '--config.train.eval_every=0', '--config.train.async_checkpoint=False']


def _env(devices: int) -> dict:
  # No persistent compilation cache: a process that finds its programs there while another
  # compiles reaches the first collective long before it, and CPU (gloo) collectives give
  # up after 30 s.
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}')
  for key in ('RADJAX_DISTRIBUTED', 'RADJAX_COORDINATOR', 'RADJAX_NUM_PROCESSES',
              'RADJAX_PROCESS_ID'):
    env.pop(key, None)
  return env


def _start(data_dir: str, workdir: str, processes: int = 2, extra: tuple = (),
           argv: list | None = None, across: str = 'data') -> list:
  """`processes` main.py processes of one run (one: a plain single-process run, 8 devices);
  each one's output goes to a file (a full pipe would stall it). `argv`: another command
  than the demo's (_argv). `across`: the mesh axis the processes lie along (dcn)."""
  argv, runs = (argv or _argv(data_dir, workdir)) + list(extra), []
  port = _free_port()
  for i in range(processes):
    # Several processes: a hybrid mesh, data parallel across them (config.mesh.dcn), 4-way
    # within each; the same 8-way data axis as one process's.
    flags = [] if processes == 1 else [f'--coordinator_address=127.0.0.1:{port}',
                                       f'--num_processes={processes}', f'--process_id={i}',
                                       f'--config.mesh.dcn.{across}={processes}']
    out = open(f'{workdir}.{len(os.listdir(os.path.dirname(workdir)))}.out', 'w+')
    proc = subprocess.Popen(argv + flags, cwd=ROOT, env=_env(8 // processes),
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    runs.append((proc, out))
  return runs


def _output(run) -> str:
  run[1].seek(0)
  return run[1].read()


def _finish(runs, timeout: float = 600) -> list[str]:
  """Waits for every process; fails with each one's output tail unless all exit 0."""
  try:
    for proc, _ in runs:
      proc.wait(timeout=timeout)
  finally:
    for proc, _ in runs:
      if proc.poll() is None:
        proc.kill()
  outs = [_output(r) for r in runs]
  codes = [proc.returncode for proc, _ in runs]
  assert codes == [0] * len(runs), '\n\n'.join(o[-3000:] for o in outs) + f'\nexit {codes}'
  return outs


def _rows(workdir: str) -> list[dict]:
  return writers.read_rows(os.path.join(workdir, 'metrics.jsonl'))


def _losses(workdir: str) -> dict:
  return {r['step']: r['train/loss'] for r in _rows(workdir) if 'train/loss' in r}


def _eval_loss(workdir: str) -> float:
  return [r['eval/val_loss'] for r in _rows(workdir) if 'eval/val_loss' in r][-1]


@pytest.fixture(scope='module')
def one_process_8_devices(demo_data, tmp_path_factory):
  """The reference: this (8-device) pytest process runs main's train in-process."""
  wd = str(tmp_path_factory.mktemp('one') / 'w')
  config = tiny_config(demo_data)
  config.train.num_steps = STEPS
  # The subprocesses run configs/demo.py itself: its auxiliary label loss on, as there.
  config.data.label_loss_weight = demo.get_config('size=micro').data.label_loss_weight
  config.data.box_token_weight = demo.get_config('size=micro').data.box_token_weight
  run_lib.main(config, wd, 'train')
  return wd


@pytest.fixture(scope='module')
def two_processes(demo_data, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp('two') / 'w')
  # A profiler trace of step 3 too, which the two processes start within the same second.
  _finish(_start(demo_data, wd, extra=('--config.train.profile_first_step=2',
                                       '--config.train.profile_steps=1')))
  return wd


def test_each_process_writes_its_own_profiler_trace(two_processes):
  for i in range(2):
    (trace,) = glob.glob(os.path.join(two_processes, f'process_{i}', 'plugins', 'profile',
                                      '*', '*.xplane.pb'))
    with open(trace, 'rb') as f:
      assert b'PjitFunction(train_step)' in f.read(), trace
  assert not os.path.exists(os.path.join(two_processes, 'plugins'))


def test_two_processes_log_the_losses_of_one_with_8_devices(one_process_8_devices,
                                                           two_processes):
  want, got = _losses(one_process_8_devices), _losses(two_processes)
  assert sorted(got) == list(range(1, STEPS + 1)) and sorted(want) == sorted(got)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=0, atol=1e-5)
  # The final evaluation (loss batches split over the processes) agrees too.
  assert abs(_eval_loss(two_processes) - _eval_loss(one_process_8_devices)) < 1e-5
  # metrics.jsonl is process 0's alone (one row per step); each process logs to its file.
  assert [r['step'] for r in _rows(two_processes) if 'train/loss' in r] == list(
      range(1, STEPS + 1))
  logs = sorted(os.listdir(os.path.join(two_processes, 'logs')))
  assert logs == ['process_0.log', 'process_1.log']
  for name in logs:
    with open(os.path.join(two_processes, 'logs', name)) as f:
      assert 'process %s/2' % name[8] in f.read()
  # Each process saved its own data-iterator state.
  data_dir = os.path.join(two_processes, 'checkpoints', str(STEPS), 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))


def test_a_checkpoint_one_process_cannot_restore_is_set_aside_by_all(demo_data, two_processes,
                                                                      tmp_path):
  """Only process 1 reads its iterator file: without it, both processes must set the
  newest checkpoint aside and resume from the older one (not process 0 going on alone)."""
  wd = str(tmp_path / 'w')
  shutil.copytree(two_processes, wd)
  os.remove(os.path.join(wd, 'checkpoints', str(STEPS), 'data', 'process_1-of-2.json'))
  outs = _finish(_start(demo_data, wd))
  assert all(f'checkpoint {STEPS} does not restore' in o for o in outs), outs[0][-2000:]
  assert os.path.isdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR, str(STEPS)))
  assert _losses(wd) == _losses(two_processes)  # the retrained steps, bit for bit


def test_a_two_process_checkpoint_resumes_in_one_process(demo_data, two_processes, tmp_path):
  """Step 2 of the two-process run, resumed by one process with 8 devices: steps 3-6 log
  the two-process losses (one unpacked stream: step k is the same examples on any count)."""
  wd = str(tmp_path / 'w')
  shutil.copytree(two_processes, wd)
  for step in range(3, STEPS + 1):
    shutil.rmtree(os.path.join(wd, 'checkpoints', str(step)), ignore_errors=True)
  outs = _finish(_start(demo_data, wd, 1))
  assert 'written by 2 process(es); this run has 1' in outs[0], outs[0][-2000:]
  want, got = _losses(two_processes), _losses(wd)
  np.testing.assert_allclose([got[s] for s in range(3, STEPS + 1)],
                             [want[s] for s in range(3, STEPS + 1)], rtol=0, atol=1e-5)
  assert not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))


def test_two_processes_evaluate_a_codec_as_one_and_log_its_reconstructions(demo_data,
                                                                           tmp_path):
  """The codec evaluator's logged inputs were this process's rows, indexed by the whole
  batch's mask: an IndexError in every process at the first evaluation. Its metrics, over
  the gathered batch, are one process's. The processes lie along fsdp (dcn.fsdp=2 x 4-way
  data within each), so each holds every other batch shard, and the 16 records fill 16 of
  a batch's 24 rows: the padding mask was gathered process by process, out of the rows'
  order, and scored padding rows in place of records."""
  def argv(wd):
    return [sys.executable, 'main.py', '--config', 'configs/vqgan.py:size=micro',
            '--workdir', wd, f'--config.data.dir={demo_data}', '--config.train.num_steps=1',
            '--config.train.eval_every=1', '--config.train.async_checkpoint=False',
            '--config.eval.batch_size=24']

  runs = {n: str(tmp_path / f'p{n}') for n in (1, 2)}
  for n, wd in runs.items():
    _finish(_start(demo_data, wd, n, argv=argv(wd), across='fsdp'))
  evals = {n: next(r for r in _rows(wd) if 'eval/psnr' in r) for n, wd in runs.items()}
  for key in ('eval/psnr', 'eval/ssim', 'eval/val_loss', 'eval/codes_used'):
    np.testing.assert_allclose(evals[2][key], evals[1][key], rtol=1e-5, err_msg=key)
  events = glob.glob(os.path.join(runs[2], '**', 'events.out.tfevents.*'), recursive=True)
  assert any(b'inputs_vs_reconstructions' in open(f, 'rb').read() for f in events), events


def test_processes_together_read_the_batches_of_one(demo_data):
  config = tiny_config(demo_data)
  task = run_lib.make_task(config)

  def batches(index, count):
    it = iter(pipeline.train_dataset(config, task.processor, 'train', index, count))
    return [next(it) for _ in range(3)]

  one, two = batches(0, 1), [batches(i, 2) for i in range(2)]
  for k in range(3):
    for key in ('tokens', 'targets', 'images'):
      rows = lambda b: sorted(r.tobytes() for r in np.asarray(b))  # noqa: E731
      assert rows(one[k][key]) == rows(np.concatenate([two[0][k][key], two[1][k][key]]))
    assert not set(map(bytes, two[0][k]['tokens'])) & set(map(bytes, two[1][k]['tokens']))


def _wait_for_step(workdir: str, procs, step: int, timeout: float = 600):
  """Until metrics.jsonl has `step`'s row (training is under way, handlers installed)."""
  end = time.time() + timeout
  while time.time() < end:
    if step in _losses(workdir):
      return
    if any(proc.poll() is not None for proc, _ in procs):
      pytest.fail('a process ended before it was signalled:\n' + '\n'.join(
          _output(r)[-3000:] for r in procs))
    time.sleep(0.2)
  pytest.fail(f'no step {step} in {workdir}/metrics.jsonl after {timeout} s')


def _sigterm_then_resume(demo_data, workdir, processes: int) -> list[str]:
  procs = _start(demo_data, workdir, processes)
  _wait_for_step(workdir, procs, 1)
  for proc, _ in procs:
    proc.send_signal(signal.SIGTERM)
  outs = _finish(procs)  # every process saved and exited 0
  stopped = max(_losses(workdir))
  assert stopped < STEPS, 'the run ended before SIGTERM was handled'
  assert any(f'preempted at step {stopped}' in o for o in outs), outs[0][-3000:]
  ckpts = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(stopped) in ckpts  # the stop step's own checkpoint: no step is lost
  _finish(_start(demo_data, workdir, processes))
  return outs


# Slow (~140 s), as is the one-process variant below. CI (-m "not slow") signals no
# multi-process training run: it keeps the two-process run without SIGTERM, SIGTERM in one
# process (tests/test_robustness.py: the signal asks for a checkpoint;
# tests/test_worker_processes.py: a run's process group signalled saves and stops), and
# two bare processes agreeing on the step they stop at
# (test_sigterm_to_one_process_stops_both_at_the_same_step, below).
@pytest.mark.slow
def test_sigterm_to_both_processes_saves_and_the_relaunch_continues(
    demo_data, tmp_path, two_processes):
  wd = str(tmp_path / 'w')
  _sigterm_then_resume(demo_data, wd, 2)
  assert _losses(wd) == _losses(two_processes)  # the uninterrupted run's curve, bit for bit


@pytest.mark.slow  # ~100 s; see above for what CI runs of SIGTERM
def test_sigterm_to_one_process_saves_and_the_relaunch_continues(
    demo_data, tmp_path, one_process_8_devices):
  wd = str(tmp_path / 'w')
  _sigterm_then_resume(demo_data, wd, 1)
  assert _losses(wd) == _losses(one_process_8_devices)


@pytest.mark.slow  # ~1 min (two processes compile); the old code took ~10 min to end
def test_an_error_in_one_process_ends_every_process_of_the_run(demo_data, tmp_path):
  """Process 1 fails after step 3 (its profiler trace's folder is a file). It used to wait
  at JAX's shutdown barrier (300 s) while process 0 waited for it in the step's
  collective, then both aborted after ~10 minutes; then process 1 left at once and JAX's
  heartbeat check ended process 0 ~90 s later, with a stack dump naming neither process 1
  nor its error. Now process 0's watchdog ends it within a few seconds, with both."""
  wd = str(tmp_path / 'w')
  os.makedirs(wd)
  open(os.path.join(wd, 'process_1'), 'w').close()
  runs = _start(demo_data, wd, extra=('--config.train.profile_first_step=3',
                                      '--config.train.profile_steps=1'))
  start = time.monotonic()
  runs[1][0].wait(timeout=420)
  failed_at = time.monotonic() - start
  try:
    runs[0][0].wait(timeout=200)
  finally:
    for proc, _ in runs:
      if proc.poll() is None:
        proc.kill()
  # 0.4-0.8 s measured (a poll a second); the margin is for a loaded 2-core CI machine.
  assert time.monotonic() - start - failed_at < 30, _output(runs[0])[-3000:]
  assert runs[1][0].returncode == 1 and runs[0][0].returncode == 1
  assert 'process_1 is not a directory' in _output(runs[1])
  out = _output(runs[0])
  assert 'error: process 1 of 2 failed: ' in out and 'process_1 is not a directory' in out, (
      out[-3000:])
  # Process 1's error was a traceback: its last line on the terminal, the whole in the log.
  with open(os.path.join(wd, 'logs', 'process_0.log')) as f:
    assert 'Its traceback:\nTraceback (most recent call last)' in f.read()


def test_the_watchdog_finds_another_process_failure_and_never_raises():
  """The watchdog's poll, against a dict standing in for the coordination service's
  key-value store (its key_value_dir_get: every key under a prefix); the real store is
  used by the test below and the slow one above."""
  store = {}

  def dir_get(prefix):
    return sorted((k, v) for k, v in store.items() if k.startswith(prefix))

  def gone(prefix):  # the store at a normal shutdown, or with process 0 ended
    raise RuntimeError('UNAVAILABLE: failed to connect to all addresses')

  assert watchdog.failure_of_another(dir_get, 0) is None
  store['radjax/failed/0'] = 'error: mine'  # its own failure: its own exit_failed ends it
  store['radjax/ended/2'] = 'error: process 0 of 4 failed: mine; ending this process too'
  assert watchdog.failure_of_another(dir_get, 0) is None
  store['radjax/failed/3'], store['radjax/failed/1'] = 'error: c', 'error: b'
  assert watchdog.failure_of_another(dir_get, 0) == (1, 'error: b')
  assert watchdog.failure_of_another(dir_get, 3) == (0, 'error: mine')
  assert watchdog.failure_of_another(gone, 0) is None
  # Process 0, failing, keeps the store up until every other process failed or ended.
  assert watchdog.all_told(dir_get, 0, 4) and not watchdog.all_told(dir_get, 0, 5)
  assert not watchdog.all_told(gone, 0, 2)

  # The loop: errors of the store never escape it; `stop` ends it at once.
  calls = []

  def flaky(prefix):
    calls.append(prefix)
    if len(calls) < 3:
      return gone(prefix)
    return [('radjax/failed/1', 'error: boom')]

  stop = threading.Event()
  assert watchdog.watch(flaky, 0, stop, interval=0.01) == (1, 'error: boom')
  assert calls == ['radjax/failed/'] * 3
  stop.set()
  begin = time.monotonic()
  assert watchdog.watch(gone, 0, stop) is None and time.monotonic() - begin < 0.5


def test_one_process_starts_no_watchdog():
  assert not jax.distributed.is_initialized()
  assert watchdog.start(lambda *_: None) is None
  assert 'radjax-watchdog' not in [t.name for t in threading.enumerate()]
  assert not distributed.is_multi_process()


@pytest.mark.parametrize('failing', [0, 1])
def test_a_failing_process_ends_the_other_within_seconds_naming_itself(failing):
  """Two bare processes joined by jax.distributed (no model; ~5 s): one fails through
  exit_failed, the other, asleep, ends with its message. Process 0 failing serves the
  store, so it waits for the other to read it."""
  code = ('import sys, time\n'
          'import jax\n'
          'from radjax.core import distributed\n'
          'distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))\n'
          'jax.devices()  # both start their backends (CPU: exchanged through the store)\n'
          'print("joined", flush=True)\n'
          'if int(sys.argv[2]) == int(sys.argv[3]):\n'
          '  time.sleep(2)\n'
          '  distributed.exit_failed(f"error: a bad record in process {sys.argv[2]}")\n'
          'time.sleep(120)\n')
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen([sys.executable, '-c', code, address, str(i), str(failing)],
                            cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    procs[failing].wait(timeout=120)
    failed_at = time.monotonic()
    procs[1 - failing].wait(timeout=60)
    ended_after = time.monotonic() - failed_at
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  outs = [proc.stdout.read() for proc in procs]
  assert [proc.returncode for proc in procs] == [1, 1], outs
  assert ended_after < 20, (ended_after, outs)  # ~1 s; JAX's heartbeat check took 100 s
  assert (f'error: process {failing} of 2 failed: a bad record in process {failing}; ending '
          f'this process ({1 - failing}) too') in outs[1 - failing], outs


def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """Two bare processes joined by jax.distributed (no model; ~5 s), stepping a loop that
  asks the training loop's Checkpointer whether to stop: SIGTERM to process 1 alone stops
  both, at one step (JAX's preemption sync point, which the multi-process Checkpointer
  asks instead of its own SIGTERM flag), so they save the same step and leave no collective
  waiting. There both save the stop step's state, an array split between them, as one
  checkpoint (orbax's multi-process save, async as in training), which one process then
  restores whole. The slow tests above run the whole preemption and relaunch."""
  code = ('import os, signal, sys, time\n'
          'import jax, numpy as np\n'
          'from jax.sharding import Mesh, NamedSharding, PartitionSpec\n'
          'from radjax.core import checkpoint, distributed\n'
          'pid = int(sys.argv[2])\n'
          'distributed.initialize(sys.argv[1], 2, pid)\n'
          'split = NamedSharding(Mesh(jax.devices(), ("d",)), PartitionSpec("d"))\n'
          'ckpt = checkpoint.Checkpointer(sys.argv[3], keep=1, handle_sigterm=True)\n'
          'for step in range(600):\n'
          '  if step == 10 and pid == 1:\n'
          '    os.kill(os.getpid(), signal.SIGTERM)\n'
          '  if ckpt.reached_preemption(step):\n'
          '    half = np.arange(4, dtype=np.float32) + 4 * pid + 100 * step\n'
          '    x = jax.make_array_from_process_local_data(split, half, (8,))\n'
          '    ckpt.save(step, {"x": x}, force=True)\n'
          '    ckpt.close()\n'
          '    print("stopped at", step, flush=True)\n'
          '    break\n'
          '  time.sleep(0.05)\n'
          'else:\n'
          '  print("never stopped", flush=True)\n')
  address = f'127.0.0.1:{_free_port()}'
  workdir = str(tmp_path / 'w')
  procs = [subprocess.Popen([sys.executable, '-c', code, address, str(i), workdir],
                            cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  try:
    for proc in procs:
      proc.wait(timeout=120)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  outs = [proc.stdout.read() for proc in procs]
  stops = [re.findall(r'^stopped at (\d+)$', out, re.M) for out in outs]
  assert [proc.returncode for proc in procs] == [0, 0], outs
  assert stops[0] == stops[1] and len(stops[0]) == 1, outs
  step = int(stops[0][0])
  assert step >= 10, outs
  reader = checkpoint_lib.Checkpointer(workdir, keep=1, use_async=False)
  assert reader.latest_step() == step
  whole = jax.ShapeDtypeStruct((8,), np.float32,
                               sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  restored = reader.restore(step, {'x': whole})
  reader.close()
  np.testing.assert_array_equal(restored['x'], np.arange(8, dtype=np.float32) + 100 * step)


def test_process_group_from_flags_or_environment(monkeypatch):
  for key in ('RADJAX_DISTRIBUTED', 'RADJAX_COORDINATOR', 'RADJAX_NUM_PROCESSES',
              'RADJAX_PROCESS_ID'):
    monkeypatch.delenv(key, raising=False)
  assert distributed.process_group() == distributed.ProcessGroup()  # one process: no-op
  assert distributed.process_group('h:1', 1, 0) == distributed.ProcessGroup()
  assert distributed.process_group('h:1', 4, 3) == distributed.ProcessGroup('h:1', 4, 3)
  with pytest.raises(ValueError, match=r'missing: --process_id \(RADJAX_PROCESS_ID\)'):
    distributed.process_group('h:1', 2)
  with pytest.raises(ValueError, match='--process_id=2 must be below --num_processes=2'):
    distributed.process_group('h:1', 2, 2)
  with pytest.raises(ValueError, match='--process_id=-3 .* count from 0'):  # not "missing"
    distributed.process_group('h:1', 2, -3)
  monkeypatch.setenv('RADJAX_COORDINATOR', 'host0:1234')
  monkeypatch.setenv('RADJAX_NUM_PROCESSES', '8')
  monkeypatch.setenv('RADJAX_PROCESS_ID', '5')
  assert distributed.process_group() == distributed.ProcessGroup('host0:1234', 8, 5)
  assert distributed.process_group(process_id=0).process_id == 0  # a flag beats the env
  monkeypatch.setenv('RADJAX_NUM_PROCESSES', 'eight')
  with pytest.raises(ValueError, match="RADJAX_NUM_PROCESSES='eight'"):
    distributed.process_group()
  for key in ('RADJAX_COORDINATOR', 'RADJAX_NUM_PROCESSES', 'RADJAX_PROCESS_ID'):
    monkeypatch.delenv(key)
  monkeypatch.setenv('RADJAX_DISTRIBUTED', '1')
  assert distributed.process_group().auto


def test_a_group_that_cannot_form_is_one_error_naming_what_was_given(tmp_path):
  """JAX's own errors name none of radjax's flags: a coordinator port another program holds,
  and RADJAX_DISTRIBUTED=1 where no cluster is detected."""
  holder = socket.socket()  # held by another process, as by a stale run
  holder.bind(('0.0.0.0', 0))
  port = holder.getsockname()[1]
  holder.close()
  hold = subprocess.Popen([sys.executable, '-c', (
      'import socket, time\ns = socket.socket()\n'
      f's.bind(("0.0.0.0", {port}))\ns.listen()\nprint("up", flush=True)\ntime.sleep(120)')],
      stdout=subprocess.PIPE, text=True)
  try:
    assert hold.stdout.readline().strip() == 'up'
    code = ('from radjax.core import distributed\n'
            'try:\n'
            '  distributed.initialize(*{args})\n'
            'except ValueError as e:\n'
            '  print(e, flush=True)\n')
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    for key in ('RADJAX_COORDINATOR', 'RADJAX_NUM_PROCESSES', 'RADJAX_PROCESS_ID'):
      env.pop(key, None)
    for args, extra, message in [
        # Checked before JAX binds it: jaxlib raised, or crashed with SIGSEGV, by version.
        ((f'127.0.0.1:{port}', 2, 0), {}, f'--coordinator_address=127.0.0.1:{port} (process 0 '
                                          f'of 2): port {port} is in use here'),
        (('127.0.0.1', 2, 0), {}, '--coordinator_address=127.0.0.1 (RADJAX_COORDINATOR): '
                                  'expected host:port'),
        ((), {'RADJAX_DISTRIBUTED': '1'}, 'RADJAX_DISTRIBUTED=1: JAX found no cluster')]:
      proc = subprocess.run([sys.executable, '-c', code.format(args=args)],
                            capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**env, **extra})
      assert proc.stdout.startswith(message), (proc.stdout, proc.stderr[-1000:])
  finally:
    hold.kill()


def test_a_given_group_keeps_every_local_gpu_under_slurm():
  """launch/slurm_gpu.sh runs one process a node with all its GPUs and passes the group as
  flags. JAX still read SLURM's variables for the devices left unset: local_device_ids =
  [SLURM_LOCALID], so each process saw GPU 0 alone (jax_cuda_visible_devices '0')."""
  port = _free_port()
  code = ('import jax\nfrom radjax.core import distributed\n'
          f'distributed.initialize("127.0.0.1:{port}", 2, {{i}})\n'
          'print("visible", jax.config.values["jax_cuda_visible_devices"], flush=True)\n')
  procs = []
  for i in range(2):
    # What srun sets for task i of a 2-node job, one task a node.
    slurm = dict(SLURM_JOB_ID='77', SLURM_STEP_NODELIST='n[0-1]', SLURM_NTASKS='2',
                 SLURM_PROCID=str(i), SLURM_LOCALID='0', SLURM_STEP_NUM_NODES='2')
    procs.append(subprocess.Popen([sys.executable, '-c', code.format(i=i)], cwd=ROOT,
                                  env={**_env(1), **slurm}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=120)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0 and 'visible all\n' in out, out[-2000:]


def test_every_process_meets_the_data_barrier_whatever_it_finds(demo_data, tmp_path):
  """main.ensure_data: a process that found the dataset returned before the barrier process
  0 waits at while it builds (a per-host path such as the demo's ~/.cache that one host
  already holds, or a look after process 0 finished), so the two met in different
  collectives: a name mismatch here, a hang or a crash in the run."""
  port = _free_port()
  code = ('import main\nfrom radjax.core import distributed\n'
          'from jax.experimental import multihost_utils\nfrom configs import demo\n'
          f'distributed.initialize("127.0.0.1:{port}", 2, {{i}})\n'
          'c = demo.get_config("size=micro")\n'
          'c.data.dir = {data!r}\n'
          'c.data.builder_kwargs.update(dict(num_train=8, num_val=4, num_test=4))\n'
          'main.ensure_data(c)\n'
          'multihost_utils.sync_global_devices("after the data")\n'
          'print("ready", flush=True)\n')
  # Process 0's copy is missing (it builds it); process 1's is there.
  dirs = [str(tmp_path / 'built_here'), demo_data]
  env = {**_env(1), 'TQDM_DISABLE': '1'}  # the build's progress bars
  procs = [subprocess.Popen([sys.executable, '-c', code.format(i=i, data=d)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i, d in enumerate(dirs)]
  try:
    outs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0 and 'ready\n' in out, out[-2000:]
  assert os.path.exists(os.path.join(dirs[0], 'manifest.json'))


_MIXED_PACKED = """from configs import demo


def get_config(arg=''):
  c = demo.get_config('size=micro,task=lm')
  c.data.dir = ''
  for name, weight in (('a', 0.7), ('b', 0.3)):
    c.data.mixture[name] = dict(dir={data!r}, tasks=tuple(c.data.tasks), weight=weight)
  # About 4 reports a row; 2 shards: one stream on 1 or 2 processes.
  c.data.pack, c.data.pack_shards, c.data.max_len = True, 2, 256
  return c
"""


@pytest.mark.slow  # two runs of 3 steps: ~2 minutes on a busy 2-core machine
def test_two_processes_log_the_examples_one_process_counts(demo_data, tmp_path):
  """A packed mixture: the processes' rows hold different numbers of examples (16 and 15)
  and of each component (13 and 9 of a), so data/examples/<name> (and examples/s) must
  count every process's rows, not process 0's (times 2). Fast check of the counting:
  tests/test_loop_throughput.py."""
  config = tmp_path / 'mixed_packed.py'
  config.write_text(_MIXED_PACKED.format(data=demo_data))
  counts = {}
  for n in (1, 2):
    wd = str(tmp_path / f'p{n}')
    argv = [sys.executable, 'main.py', '--config', str(config), '--workdir', wd,
            '--config.train.num_steps=3', '--config.train.log_every=1',
            '--config.train.checkpoint_every=3', '--config.train.eval_every=0',
            '--config.train.async_checkpoint=False']
    _finish(_start(demo_data, wd, n, argv=argv))
    counts[n] = {r['step']: (r['data/examples/a'], r['data/examples/b'])
                 for r in _rows(wd) if 'data/examples/a' in r}
  assert sorted(counts[1]) == [1, 2, 3] and counts[2] == counts[1]
  batch = demo.get_config('size=micro').train.batch_size
  assert all(a + b > batch and a and b for a, b in counts[1].values()), counts  # packed
