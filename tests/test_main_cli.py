"""main.py's own command line: a misspelt --config override is a one-line error."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_misspelt_override_is_one_line_naming_it_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       str(workdir), '--config.data.dirr=/x'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --config.data.dirr: the config has no key 'dirr'. "
      'Did you mean "dir" instead of "dirr"?')
  assert 'Traceback' not in proc.stderr and not workdir.exists()
