"""config.train.profile_steps: a profiler trace of training steps in <workdir>/plugins/profile."""
import glob
import os

from radjax import run
from tests.conftest import tiny_config


def _traces(workdir: str) -> list[bytes]:
  runs = sorted(glob.glob(os.path.join(workdir, 'plugins', 'profile', '*')))
  out = []
  for r in runs:
    files = glob.glob(os.path.join(r, '*.xplane.pb'))
    assert len(files) == 1, r
    with open(files[0], 'rb') as f:
      out.append(f.read())
  return out


def test_the_trace_holds_train_steps_and_ends_with_the_run(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.train.num_steps, config.train.profile_first_step, config.train.profile_steps = 6, 2, 2
  workdir = str(tmp_path / 'run')
  run.main(config, workdir, 'train')
  (trace,) = _traces(workdir)
  assert b'PjitFunction(train_step)' in trace  # a step was called inside it
  # Resumed with a trace the run outlives: it is written when the run ends.
  config.train.num_steps, config.train.profile_first_step, config.train.profile_steps = 8, 7, 5
  run.main(config, workdir, 'train')
  traces = _traces(workdir)
  assert len(traces) == 2 and b'PjitFunction(train_step)' in traces[1]
