"""The embedded demo's promise, run exactly as a user runs it (slow: ~4-5 minutes on 2
cores): after `python main.py --config configs/demo.py`, held-out finding micro-F1 >= 0.90
and every finding >= 0.75 (README, "What the demo shows"). On the Intel Xeon that
replaced the AMD machine the demo of before scored 0.842, with cardiomegaly at 0.0: the
float rounding of another CPU is enough to lose a finding, so this is checked, not assumed."""
import json
import os
import subprocess
import sys

import pytest

from radjax.data import schema
from tests.conftest import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_meets_its_finding_targets(tmp_path):
  workdir, data = str(tmp_path / 'run'), str(tmp_path / 'data')
  # One CPU device, as a user's run has (tests/conftest.py emulates 8 for the rest).
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in ('--xla_force_host_platform_device_count=8', FAST_COMPILE):
    flags = flags.replace(flag, '')
  env = dict(os.environ, XLA_FLAGS=flags.strip())
  proc = subprocess.run([sys.executable, 'main.py', '--config', 'configs/demo.py',
                         '--workdir', workdir, f'--config.data.dir={data}'], cwd=ROOT, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'pre_stage', 'config.json')) as f:
    assert json.load(f)['data']['dir'] == data  # stage 1 read the same dataset
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    final = [r for r in map(json.loads, f) if 'eval/finding_micro_f1' in r][-1]
  assert final['step'] == 750
  assert final['eval/finding_micro_f1'] >= 0.90, final
  for finding in schema.DEMO_FINDINGS:
    assert final[f'eval/finding_{finding}/f1'] >= 0.75, (finding, final)
