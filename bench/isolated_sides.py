"""bench/vs_hf_train.py --isolate: the sides in processes of their own.

In one process, a side that has just stepped slows the next: at 43m radjax's step took
16-25 % longer once HF had stepped, alone or in turn (BENCHMARKS.md, session 17). Here the
controller starts one worker per group of sides (by default a group is one side). Each
worker builds sides as the in-process mode does (one with an HF side builds radjax's too,
so that the HF twin gets radjax's initial weights) and keeps only its group's. The
controller then tells the workers to step one after another, through their stdin, so
machine load still hits all sides alike; or, with `one_at_a_time`, runs each worker's
steps to the end and lets it exit before it starts the next, so that each group has the
device's memory to itself (on an 80 GB GPU the full-size radjax and HF steps do not fit
together). A worker answers on stdout with lines that start with PREFIX; anything else it
prints passes through.
"""
import gc
import json
import subprocess
import sys

PREFIX = '@@side '


def worker(build, indices: list[int], warmup: int, timed, lead: int = 0) -> None:
  """Runs in a worker: `build()` -> (the row fields every side shares, sides); keeps the
  sides at `indices`. On each 'step' line of stdin it steps each kept
  side, in order, `lead` times untimed and then once timed, and answers each with the
  seconds it took."""
  fields, sides = build()
  kept = [sides[i] for i in indices]
  del sides
  gc.collect()  # the other sides' weights and optimizer state go now
  for side in kept:
    loss0 = side['first_loss']()
    for _ in range(warmup - 1):
      side['run']()
    _answer(dict(name=side['name'], params=side['params'], loss0=loss0, **fields))
  for line in sys.stdin:
    if line.strip() != 'step':
      return
    for side in kept:
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


def run(argv: list[str], size: str, groups: list[list[int]], steps: int,
        one_at_a_time: bool = False, report=lambda rows: None) -> list[dict]:
  """Controller: one worker per group of side indices (`argv` + --worker_size and
  --worker_sides), every side stepped `steps` times; one result dict per side (as
  run_sides gives), in the groups' order. The workers are stepped in turn, or with
  `one_at_a_time` each to its end before the next starts; `report` gets each such
  batch's rows as soon as its workers are done (a run cut short keeps them)."""
  start = lambda group: subprocess.Popen(
      [sys.executable, *argv, f'--worker_size={size}',
       '--worker_sides=' + ','.join(map(str, group))],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  batches = [[g] for g in groups] if one_at_a_time else [groups]
  rows = []
  for batch in batches:
    procs = [start(g) for g in batch]
    try:
      infos = [[_read(p) for _ in g] for p, g in zip(procs, batch)]
      times = [[[] for _ in g] for g in batch]
      for _ in range(steps):
        for p, ts in zip(procs, times):
          p.stdin.write('step\n')
          p.stdin.flush()
          for t in ts:
            t.append(float(_read(p)))
    finally:
      for p in procs:
        if p.poll() is None:
          p.stdin.close()
          p.wait()
    done = [dict(size=size, side=info.pop('name'), times=t, **info)
            for group_infos, group_times in zip(infos, times)
            for info, t in zip(group_infos, group_times)]
    report(done)
    rows += done
  return rows
