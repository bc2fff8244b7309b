r"""kill -9 / SIGTERM experiment: interrupt a short run at random moments, rerun the same
command, and compare every logged loss with an uninterrupted run's, float for float.

  python -m bench.kill_resume --kills 20 --sigterms 3 --out /tmp/kill_resume

Kills aim in turn at a train step, a checkpoint write (an orbax tmp directory exists)
and an evaluation (after an eval step's train row, before its eval row), each after a
random delay. After every interruption the losses logged so far must equal the
reference; a run that finishes starts a fresh chain. Prints the counts.
The run is the demo recipe shrunk as tests/conftest.py does (one CPU device), with
async checkpoints as real runs use; `--config bench/kill_resume.py:DATA_DIR`.
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

NUM_STEPS, CKPT_EVERY, EVAL_EVERY = 24, 4, 8


def get_config(arg: str = ''):
  from configs import demo
  c = demo.get_config('size=micro')
  c.data.dir = arg
  c.train.num_steps = NUM_STEPS
  c.train.checkpoint_every = CKPT_EVERY
  c.train.eval_every = EVAL_EVERY
  c.train.async_checkpoint = True
  return c


def command(data_dir: str, workdir: str) -> list[str]:
  return [sys.executable, 'main.py', '--config', f'bench/kill_resume.py:{data_dir}',
          '--workdir', workdir]


def rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except ValueError:  # a half-written last line: the next run trims it
        pass
  return out


def losses(workdir: str) -> dict:
  return {r['step']: r['train/loss'] for r in rows(workdir) if 'train/loss' in r}


def evals(workdir: str) -> set:
  return {r['step'] for r in rows(workdir) if any(k.startswith('eval/') for k in r)}


def phase(workdir: str) -> str:
  """What the run was doing, judged from its workdir."""
  if glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*')):
    return 'checkpoint write'
  last = max(losses(workdir), default=0)
  if last and last % EVAL_EVERY == 0 and last not in evals(workdir):
    return 'evaluation'
  return 'steps' if last else 'startup'


def wait_for(proc, cond, timeout=600.0) -> bool:
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      return False
    if cond():
      return True
    time.sleep(0.02)
  return False


def interrupt(proc, workdir: str, target: str, sig: int, rng: random.Random) -> str | None:
  """Waits for the target moment, sends `sig`; the phase it hit, or None if it finished."""
  start = max(losses(workdir), default=0)
  if target == 'checkpoint':
    ok = wait_for(proc, lambda: glob.glob(os.path.join(workdir, 'checkpoints', '*tmp*')))
    time.sleep(rng.uniform(0, 0.05))
  elif target == 'evaluation':
    ok = wait_for(proc, lambda: any(s > start and s % EVAL_EVERY == 0 and s not in evals(workdir)
                                    for s in losses(workdir)))
    time.sleep(rng.uniform(0, 2.0))
  else:
    ok = wait_for(proc, lambda: max(losses(workdir), default=0) > start)
    time.sleep(rng.uniform(0, 1.5))
  if not ok or proc.poll() is not None:
    return None
  hit = phase(workdir)
  proc.send_signal(sig)
  return hit


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--kills', type=int, default=20)
  parser.add_argument('--sigterms', type=int, default=3)
  parser.add_argument('--out', default='/tmp/kill_resume')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  os.makedirs(args.out, exist_ok=True)
  data_dir = os.path.join(args.out, 'data')
  if not os.path.exists(os.path.join(data_dir, 'manifest.json')):
    from data_prep import demo as demo_builder
    demo_builder.build(data_dir, seed=0, num_train=64, num_val=16, num_test=16)
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '3'}
  log = open(os.path.join(args.out, 'runs.log'), 'a')
  ref_dir = os.path.join(args.out, 'reference')
  if sorted(losses(ref_dir)) != list(range(1, NUM_STEPS + 1)):
    shutil.rmtree(ref_dir, ignore_errors=True)
    subprocess.run(command(data_dir, ref_dir), check=True, env=env, stdout=log, stderr=log)
  ref = losses(ref_dir)

  plan = [('kill', signal.SIGKILL)] * args.kills + [('term', signal.SIGTERM)] * args.sigterms
  targets = ['step', 'checkpoint', 'evaluation']
  results, chain = [], 0
  workdir = None
  for i, (kind, sig) in enumerate(plan):
    hit = None
    while hit is None:
      if workdir is None:
        chain += 1
        workdir = os.path.join(args.out, f'chain{chain}')
        shutil.rmtree(workdir, ignore_errors=True)
      proc = subprocess.Popen(command(data_dir, workdir), env=env, stdout=log, stderr=log)
      target = 'step' if kind == 'term' else targets[i % 3]
      hit = interrupt(proc, workdir, target, sig, rng)
      code = proc.wait()
      if hit is None:  # finished before the moment came: check it, start a new chain
        results.append(dict(kind='finished', exit=code, **check(workdir, ref)))
        workdir = None
    saved = check(workdir, ref)
    results.append(dict(kind=kind, target=target, hit=hit, exit=code, **saved))
    print(json.dumps(results[-1]), flush=True)
  proc = subprocess.run(command(data_dir, workdir), env=env, stdout=log, stderr=log)
  results.append(dict(kind='finished', exit=proc.returncode, **check(workdir, ref)))
  print(json.dumps(results[-1]), flush=True)
  interrupted = [r for r in results if r['kind'] != 'finished']
  finished = [r for r in results if r['kind'] == 'finished']
  summary = {
      'kills': sum(r['kind'] == 'kill' for r in interrupted),
      'sigterms': sum(r['kind'] == 'term' for r in interrupted),
      'hits': {p: sum(r['hit'] == p for r in interrupted) for p in
               ('startup', 'steps', 'checkpoint write', 'evaluation')},
      'interruptions_with_all_logged_losses_identical': sum(r['identical'] for r in interrupted),
      'sigterm_exit_codes': [r['exit'] for r in interrupted if r['kind'] == 'term'],
      'sigterm_checkpointed_last_step': sum(r['kind'] == 'term' and r['ckpt_at_last_row']
                                            for r in interrupted),
      'finished_runs': len(finished),
      'finished_runs_identical_with_all_evals': sum(r['identical'] and r['complete']
                                                    for r in finished),
  }
  with open(os.path.join(args.out, 'results.json'), 'w') as f:
    json.dump({'results': results, 'summary': summary}, f, indent=1)
  print(json.dumps(summary, indent=1))


def check(workdir: str, ref: dict) -> dict:
  got = losses(workdir)
  due = {s for s in range(1, NUM_STEPS + 1) if s % EVAL_EVERY == 0 or s == NUM_STEPS}
  steps = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()] \
      if os.path.isdir(os.path.join(workdir, 'checkpoints')) else []
  return {'logged': len(got), 'identical': all(ref.get(s) == v for s, v in got.items()),
          'complete': sorted(got) == sorted(ref) and due <= evals(workdir),
          'ckpt_at_last_row': bool(got) and max(got) in steps,
          'damaged_set_aside': len(glob.glob(os.path.join(workdir, 'checkpoints_damaged', '*')))}


if __name__ == '__main__':
  main()
