"""bench/vs_hf_train.py's rounds (lead steps before each timed one) and bench/idle_gap.py's
per-step accounting, with counter steps in place of models."""
import time

from bench import idle_gap, vs_hf_train


def test_each_timed_step_follows_its_own_lead_steps():
  log = []
  runs = [lambda i=i: log.append(i) for i in range(2)]

  def timed(run):
    run()
    return float(len(log))  # the "time" is where in the sequence the timed step ran

  times = vs_hf_train.step_in_turn(runs, steps=2, lead=2, timed=timed)
  # Round by round: run 0 three times (two untimed), then run 1 three times.
  assert log == [0, 0, 0, 1, 1, 1] * 2
  assert times == [[3.0, 9.0], [6.0, 12.0]]
  log.clear()
  assert vs_hf_train.step_in_turn(runs, steps=2, lead=0, timed=timed) == [[1.0, 3.0],
                                                                           [2.0, 4.0]]
  assert log == [0, 1, 0, 1]


def test_reported_memory_reads_the_kernel_counter_or_says_absent(tmp_path):
  counter = tmp_path / 'reported_kib'
  counter.write_text('3072\n')
  assert idle_gap.reported_mib(str(counter)) == 3.0
  assert idle_gap.reported_mib(str(tmp_path / 'absent')) is None


def test_gap_step_sleeps_first_and_times_only_the_step():
  t0 = time.perf_counter()
  row = idle_gap.gap_step(lambda: time.sleep(0.05), 0.6, lambda: None)
  assert time.perf_counter() - t0 >= 0.65
  assert 0.05 <= row['wall'] < 0.5  # the gap is not in the step's time
  assert row['faults'] >= 0 and row['sys'] >= 0
  without = dict(row, gap_mib=None, step_mib=None)
  cells = idle_gap.summarise('side', 0.6, [without, without])
  assert cells[:3] == ['side', '0.6 s', f"{row['wall'] * 1e3:,.1f} ms"]
  assert cells[-2:] == ['-', '-']  # no free page reporting: said, not zero
