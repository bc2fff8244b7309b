"""launch/slurm_gpu.sh as SLURM runs it: two tasks, each `srun` copy with its own
SLURM_PROCID, joined through the coordinator the script takes from `scontrol`. SLURM is
not on this machine, so `srun` and `scontrol` are two-line stand-ins that do what SLURM
does with the script's command; everything after them is the script's own (its XLA
flags, parsed by this jaxlib, its arguments, main.py on two CPU processes whose state is
split between them, saved, and resumed by the job resubmitted)."""
import os
import shutil
import stat
import subprocess

from tests.test_multiprocess import ROOT, _env, _free_port, _losses

SRUN = """#!/usr/bin/env bash
# SLURM's srun: its own options dropped, the command once per task, SLURM_PROCID=task.
while [ "${1#--}" != "$1" ]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & pids+=($!); done
rc=0; for p in "${pids[@]}"; do wait "$p" || rc=$?; done; exit $rc
"""


def _tool(folder, name: str, text: str) -> None:
  path = folder / name
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _launch(demo_data: str, workdir: str, env: dict, steps: int) -> None:
  proc = subprocess.run(
      ['bash', 'launch/slurm_gpu.sh', 'configs/demo.py:size=micro', workdir,
       f'--config.data.dir={demo_data}', f'--config.train.num_steps={steps}',
       '--config.train.eval_every=0', '--config.train.async_checkpoint=False',
       # Parameters and moments split across the two tasks (the 7B recipes' default), so
       # each task saves and restores only its halves.
       '--config.mesh.data=1', '--config.mesh.fsdp=-1'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_slurm_script_runs_a_two_task_job_that_resumes_its_split_state(demo_data, tmp_path):
  tools = tmp_path / 'bin'
  tools.mkdir()
  _tool(tools, 'srun', SRUN)
  # Host names, one per line; the pause leaves a reader that stops at the first line (head
  # -n 1, as the script had) a second write into a closed pipe: SIGPIPE, the job's exit 141.
  _tool(tools, 'scontrol', '#!/bin/sh\necho 127.0.0.1; sleep 0.2; echo 127.0.0.2\n')
  env = _env(1)  # one CPU device a task
  env.pop('XLA_FLAGS')  # the script's own GPU flags, which XLA parses on any backend
  env.update(PATH=f'{tools}:{env["PATH"]}', SLURM_NTASKS='2', SLURM_JOB_NODELIST='n[0-1]',
             RADJAX_PORT=str(_free_port()))
  workdir = str(tmp_path / 'w')
  _launch(demo_data, workdir, env, 3)
  # Each task was its own process of the one job (fsdp=2 needs both devices).
  assert sorted(os.listdir(os.path.join(workdir, 'logs'))) == ['process_0.log',
                                                               'process_1.log']
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['3']
  env['RADJAX_PORT'] = str(_free_port())
  _launch(demo_data, workdir, env, 4)  # the job resubmitted with one more step
  assert sorted(_losses(workdir)) == [1, 2, 3, 4]
  assert 'resuming from step 3' in open(os.path.join(workdir, 'logs', 'process_1.log')).read()
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '4']


def test_each_launcher_without_its_arguments_prints_its_usage():
  """Was `$1: unbound variable` (set -u)."""
  for script, args in (('local.sh', []), ('tpu_vm.sh', ['c.py']), ('tpu_pod.sh', ['name']),
                       ('slurm_gpu.sh', [])):
    proc = subprocess.run(['bash', f'launch/{script}', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and 'usage: ' in proc.stderr, (script, proc.stderr)
    assert script in proc.stderr


GCLOUD = """#!/usr/bin/env bash
# gcloud's `compute tpus tpu-vm ssh NAME ... --command CMD`: records its arguments, one
# file a call, waits until every slice's call has started (as the slices' workers must all
# join), and fails for a slice named 'bad'.
printf '%s\\n' "$@" > "$GCLOUD_LOG/$5"
for _ in $(seq 50); do [ "$(ls "$GCLOUD_LOG" | wc -l)" -ge "$SLICES" ] && break; sleep 0.1; done
[ "$(ls "$GCLOUD_LOG" | wc -l)" -ge "$SLICES" ] || { echo "$5 alone" >&2; exit 3; }
[ "$5" != bad ]
"""


def test_tpu_pod_starts_every_slice_of_a_multislice_run_at_once(tmp_path):
  """Multislice (--config.mesh.dcn.data=<slices>) was documented, but the script took one
  NAME and ssh'd into that slice's workers alone: they waited for the other slices'
  processes until JAX gave up. Each name of NAME,NAME... now gets its ssh, side by side."""
  tools, log = tmp_path / 'bin', tmp_path / 'calls'
  tools.mkdir()
  _tool(tools, 'gcloud', GCLOUD)
  env = dict(os.environ, PATH=f'{tools}:{os.environ["PATH"]}')
  for names, code in (('q-0,q-1', 0), ('one', 0), ('q-0,bad', 1)):
    log.mkdir()
    proc = subprocess.run(
        ['bash', 'launch/tpu_pod.sh', names, 'us-east5-b', 'configs/radvlm.py', '/mnt/gcs/r',
         '--config.mesh.dcn.data=2', '--config.data.dir=/mnt/gcs/my data'],
        cwd=ROOT, env={**env, 'GCLOUD_LOG': str(log), 'SLICES': str(names.count(',') + 1)},
        capture_output=True, text=True, timeout=60)
    assert (proc.returncode != 0) == bool(code), (names, proc.stderr)
    calls = {p.name: p.read_text().splitlines() for p in log.iterdir()}
    assert sorted(calls) == sorted(names.split(',')), (names, proc.stderr)
    for name, argv in calls.items():
      assert argv[:5] == ['compute', 'tpus', 'tpu-vm', 'ssh', name]
      assert argv[5:9] == ['--zone', 'us-east5-b', '--worker=all', '--command']
      assert argv[9].endswith(r'bash launch/tpu_vm.sh configs/radvlm.py /mnt/gcs/r '
                              r'--config.mesh.dcn.data=2 --config.data.dir=/mnt/gcs/my\ data')
    shutil.rmtree(log)
