"""bench/vs_hf_train.py --isolate: a process per side, stepped in turn by the controller."""
import os
import subprocess
import sys
import textwrap

import pytest

from bench import isolated_sides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker whose sides are counters: each step's "time" is 100 x the index of the side that
# stepped plus the count of the worker's steps so far, so the answers show which side
# stepped and in what order. Each worker notes its start and its end in the log.
WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from bench import isolated_sides
    indices = [int(i) for i in sys.argv[-1].split('=')[1].split(',')]
    log = lambda what: open({log!r}, 'a').write(f'{{what}} {{indices}}\\n')
    log('start')
    print('a line that is not an answer')
    count = []
    fields = dict(shape='2 x 8', image_tokens=3, dtype='f32', tokens=16)
    def side(i):
      return dict(name=f'side {{i}}', params=10 + i, first_loss=lambda: 1.5 + i,
                  run=lambda: count.append(i))
    isolated_sides.worker(lambda: (fields, [side(0), side(1), side(2)]), indices, 2,
                          lambda run: (run(), 100 * count[-1] + len(count))[1], lead={lead})
    log('end')
""")


def _script(tmp_path, lead):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER.format(root=ROOT, lead=lead, log=str(tmp_path / 'log')))
  return script


@pytest.mark.parametrize('lead', [0, 1])
def test_workers_step_in_turn_and_report_their_own_side(tmp_path, capfd, lead):
  rows = isolated_sides.run([str(_script(tmp_path, lead))], 'micro', [[0], [1]], steps=3)
  assert [r['side'] for r in rows] == ['side 0', 'side 1']
  assert [r['params'] for r in rows] == [10, 11]
  assert [r['loss0'] for r in rows] == [1.5, 2.5]
  # first_loss is not a step; the warm-up (2) ran one, then 3 timed steps each, every
  # one after `lead` untimed steps.
  counts = [1 + (1 + lead) * k for k in (1, 2, 3)]
  assert rows[0]['times'] == counts and rows[1]['times'] == [100 + c for c in counts]
  assert rows[0]['tokens'] == 16 and rows[0]['image_tokens'] == 3
  assert 'a line that is not an answer' in capfd.readouterr().out
  # Both workers were up before either ended: they stepped in turn.
  assert sorted((tmp_path / 'log').read_text().splitlines()[:2]) == ['start [0]', 'start [1]']


def test_one_at_a_time_runs_each_group_to_its_end_before_the_next(tmp_path):
  reported = []
  rows = isolated_sides.run([str(_script(tmp_path, 0))], 'micro', [[0, 2], [1]], steps=2,
                            one_at_a_time=True, report=reported.append)
  # Each group's rows as soon as its worker is done.
  assert [[r['side'] for r in batch] for batch in reported] == [['side 0', 'side 2'], ['side 1']]
  assert [r['side'] for r in rows] == ['side 0', 'side 2', 'side 1']
  assert [r['loss0'] for r in rows] == [1.5, 3.5, 2.5]
  # A worker's sides step in turn on its count: side 0 and side 2 each warmed up once.
  assert rows[0]['times'] == [3, 5] and rows[1]['times'] == [204, 206]
  assert rows[2]['times'] == [102, 103]
  assert (tmp_path / 'log').read_text().splitlines() == [
      'start [0, 2]', 'end [0, 2]', 'start [1]', 'end [1]']


def test_a_worker_that_dies_is_named(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text('import sys; sys.exit(3)\n')
  with pytest.raises(RuntimeError, match=r'--worker_sides=0.*rc 3'):
    isolated_sides.run([str(script)], 'micro', [[0]], steps=1)


@pytest.mark.slow  # two processes each build both micro sides (~1 min of CPU)
@pytest.mark.parametrize('mode', ['--isolate', '--one_at_a_time'])
def test_isolated_sides_start_from_the_same_loss(mode):
  out = subprocess.run(
      [sys.executable, 'bench/vs_hf_train.py', '--config', 'configs/demo.py:size=micro',
       '--config.data.label_loss_weight=0', '--config.data.box_token_weight=0',
       '--steps', '1', '--warmup', '1', mode, '--torch_threads', '1'],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  rows = [line.split('|') for line in out.splitlines() if line.startswith('| demo |')]
  assert [r[2].strip() for r in rows] == ['radjax', 'HF eager']
  losses = [float(r[-2]) for r in rows]  # the last column
  assert abs(losses[0] - losses[1]) < 1e-3, losses
