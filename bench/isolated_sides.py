"""bench/vs_hf_train.py --isolate: each side in a process of its own, still stepped in turn.

In one process, a side that has just stepped slows the next: at 43m radjax's step took
16-25 % longer once HF had stepped, alone or in turn (BENCHMARKS.md, session 17). Here the
controller starts one worker per side. Each worker builds every side as the in-process
mode does, so the HF twin gets radjax's initial weights, and keeps only its own. The
controller then tells the workers to step one after another, through their stdin, so
machine load still hits all sides alike. A worker answers on stdout with lines that
start with PREFIX; anything else it prints passes through.
"""
import gc
import json
import subprocess
import sys

PREFIX = '@@side '


def worker(build, index: int, warmup: int, timed, lead: int = 0) -> None:
  """Runs in a worker: `build()` -> (the row fields every side shares, sides); keeps
  sides[index]. On each 'step' line of stdin it steps `lead` times untimed, then once
  timed, and answers with the seconds that step took."""
  fields, sides = build()
  side = sides[index]
  del sides
  gc.collect()  # the other sides' weights and optimizer state go now
  loss0 = side['first_loss']()
  for _ in range(warmup - 1):
    side['run']()
  _answer(dict(name=side['name'], params=side['params'], loss0=loss0, **fields))
  for line in sys.stdin:
    if line.strip() != 'step':
      return
    for _ in range(lead):
      side['run']()
    _answer(timed(side['run']))


def _answer(value) -> None:
  print(PREFIX + json.dumps(value), flush=True)


def _read(proc) -> object:
  for line in proc.stdout:
    if line.startswith(PREFIX):
      return json.loads(line[len(PREFIX):])
    sys.stdout.write(line)
  raise RuntimeError(f'bench worker {proc.args[-1]} exited (rc {proc.wait()}) before '
                     'answering; its stderr is above')


def run(argv: list[str], size: str, num_sides: int, steps: int) -> list[dict]:
  """Controller: one worker per side (`argv` + --worker_size/--worker_index), each
  stepped `steps` times in turn; one result dict per side (as run_sides gives)."""
  procs = [subprocess.Popen([sys.executable, *argv, f'--worker_size={size}',
                             f'--worker_index={i}'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
           for i in range(num_sides)]
  try:
    infos = [_read(p) for p in procs]
    times = [[] for _ in procs]
    for _ in range(steps):
      for p, ts in zip(procs, times):
        p.stdin.write('step\n')
        p.stdin.flush()
        ts.append(float(_read(p)))
  finally:
    for p in procs:
      if p.poll() is None:
        p.stdin.close()
        p.wait()
  return [dict(size=size, side=info.pop('name'), times=ts, **info)
          for info, ts in zip(infos, times)]
