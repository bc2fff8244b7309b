"""Every `--config.<knob>` the README, the recipes' and benchmarks' usage lines and the
launchers tell a user to type names a knob some recipe has: a renamed or removed knob
must take its examples with it (BENCHMARKS.md is a history and may name old ones)."""
import glob
import os
import re

import pytest

from radjax.core import recipe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Placeholders of the usage lines, not knobs.
GENERIC = {'x', 'a.b', 'key', 'x.y'}
# Knobs whose children are the user's own names (mixture components, eval datasets).
OPEN = ('data.mixture.', 'eval.datasets.')


def _keys(config, prefix: str = '') -> set[str]:
  out = set()
  for key, value in config.items():
    out.add(prefix + key)
    if hasattr(value, 'items'):
      out |= _keys(value, f'{prefix}{key}.')
  return out


@pytest.fixture(scope='module')
def known() -> set[str]:
  keys = set()
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    if os.path.basename(path) in ('base.py', 'common.py', 'workdir.py'):
      continue
    for arg in ('', ':size=tiny'):
      try:
        keys |= _keys(recipe.load(os.path.relpath(path, ROOT) + arg))
      except ValueError:  # a size that needs an argument (llm_cxr tiny: its codec)
        continue
  return keys


def _documents() -> list[str]:
  names = ['README.md', 'main.py'] + [
      p for pattern in ('configs/*.py', 'bench/*.py', 'bench/*.sh', 'launch/*')
      for p in glob.glob(pattern, root_dir=ROOT)]
  return sorted(names)


def test_documented_knobs_exist(known):
  assert len(known) > 300  # every recipe loaded
  unknown = []
  for name in _documents():
    text = open(os.path.join(ROOT, name)).read()
    for match in re.finditer(r'--config\.([A-Za-z0-9_.]*[A-Za-z0-9_])', text):
      knob = match.group(1)
      if knob in GENERIC or knob in known or knob.startswith(OPEN):
        continue
      line = text[:match.start()].count('\n') + 1
      unknown.append(f'{name}:{line}: --config.{knob}')
  assert not unknown, 'knobs no recipe has:\n' + '\n'.join(unknown)


def _commands(text: str):
  """The README's command lines (continuations joined) that run a recipe file with knobs."""
  line = ''
  for raw in text.splitlines():
    line += ' ' + raw.strip()
    if line.endswith('\\'):
      line = line[:-1]
      continue
    spec = re.search(r'\bconfigs/(\w+\.py(?::\S+)?)', line)
    knobs = re.findall(r'--config\.([\w.]+)=(\S+)', line.split(' #')[0])
    devices = re.search(r'device_count=(\d+)', line)
    if spec and knobs and ('main.py' in line or 'launch/' in line):
      yield (spec.group(1).rstrip('`'), [(k, v.rstrip('`')) for k, v in knobs],
             devices and int(devices.group(1)))
    line = ''


@pytest.mark.parametrize('document', ['README.md', 'main.py'])
def test_documented_commands_give_a_config_that_runs(monkeypatch, document):
  """Each command's knobs applied as main.py applies them (ml_collections' parser); the
  result passes the config checks and leaves at most one mesh axis to -1; where the
  command sets a device count, its mesh resolves on that many devices."""
  from absl import flags
  from ml_collections import config_flags

  from radjax.core import config_checks, sharding
  checked = 0
  for spec, knobs, devices in _commands(open(os.path.join(ROOT, document)).read()):
    if spec.split(':')[0] in ('X.py', 'workdir.py') or any('...' in v for _, v in knobs):
      continue
    argv = ['main.py', f'--config=configs/{spec}'] + [f'--config.{k}={v}' for k, v in knobs]
    monkeypatch.setattr('sys.argv', argv)  # where config_flags finds the override flags
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, '', flag_values=values)
    try:
      values(argv)
      config = values.config
    except flags.IllegalFlagValueError as e:  # a recipe argument that needs a real workdir
      if 'workdir' in str(e) or 'codec' in str(e):
        continue
      raise
    config_checks.check(config)
    assert [config.mesh[a] for a in ('data', 'fsdp', 'tensor')].count(-1) <= 1, spec
    if devices:
      sharding.mesh_shape(config.mesh, devices)
    checked += 1
  assert checked >= (3 if document == 'README.md' else 1)
