"""bench/vs_hf_train.py --isolate: a process per side, stepped in turn by the controller."""
import os
import subprocess
import sys
import textwrap

import pytest

from bench import isolated_sides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker whose side is a counter: each step's "time" is the side's index plus the count
# of its steps so far, so the answers show which worker stepped and in what order.
WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from bench import isolated_sides
    index = int(sys.argv[-1].split('=')[1])
    print('a line that is not an answer')
    count = []
    fields = dict(shape='2 x 8', image_tokens=3, dtype='f32', tokens=16)
    def side(i):
      return dict(name=f'side {{i}}', params=10 + i, first_loss=lambda: 1.5 + i,
                  run=lambda: count.append(1))
    isolated_sides.worker(lambda: (fields, [side(0), side(1)]), index, 2,
                          lambda run: (run(), index + len(count))[1], lead={lead})
""")


@pytest.mark.parametrize('lead', [0, 1])
def test_workers_step_in_turn_and_report_their_own_side(tmp_path, capfd, lead):
  script = tmp_path / 'worker.py'
  script.write_text(WORKER.format(root=ROOT, lead=lead))
  rows = isolated_sides.run([str(script)], 'micro', num_sides=2, steps=3)
  assert [r['side'] for r in rows] == ['side 0', 'side 1']
  assert [r['params'] for r in rows] == [10, 11]
  assert [r['loss0'] for r in rows] == [1.5, 2.5]
  # first_loss is not a step; the warm-up (2) ran one, then 3 timed steps each, every
  # one after `lead` untimed steps.
  counts = [1 + (1 + lead) * k for k in (1, 2, 3)]
  assert rows[0]['times'] == counts and rows[1]['times'] == [c + 1 for c in counts]
  assert rows[0]['tokens'] == 16 and rows[0]['image_tokens'] == 3
  assert 'a line that is not an answer' in capfd.readouterr().out


def test_a_worker_that_dies_is_named(tmp_path):
  script = tmp_path / 'worker.py'
  script.write_text('import sys; sys.exit(3)\n')
  with pytest.raises(RuntimeError, match=r'--worker_index=0.*rc 3'):
    isolated_sides.run([str(script)], 'micro', num_sides=1, steps=1)


@pytest.mark.slow  # two processes each build both micro sides (~1 min of CPU)
def test_isolated_sides_start_from_the_same_loss():
  out = subprocess.run(
      [sys.executable, 'bench/vs_hf_train.py', '--config', 'configs/demo.py:size=micro',
       '--config.data.label_loss_weight=0', '--config.data.box_token_weight=0',
       '--steps', '1', '--warmup', '1', '--isolate', '--torch_threads', '1'],
      cwd=ROOT, capture_output=True, text=True, check=True).stdout
  rows = [line.split('|') for line in out.splitlines() if line.startswith('| demo |')]
  assert [r[2].strip() for r in rows] == ['radjax', 'HF eager']
  losses = [float(r[-2]) for r in rows]  # the last column
  assert abs(losses[0] - losses[1]) < 1e-3, losses
