"""Recipe files by spec: 'path/to/recipe.py[:arg]' -> its get_config(arg), as main.py's
--config reads it."""
import importlib.util
import os


def load(spec: str, knob: str = ''):
  """`knob` (e.g. 'config.train.pre_stage'), where given, opens each error's message."""
  where = f'{knob}={spec!r}' if knob else f'recipe {spec!r}'
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{where}: no file {path!r} (paths are relative to the '
                            'directory main.py runs in)')
  # spec_from_file_location gives no loader for a file not named .py (README.md, a .yaml).
  module_spec = importlib.util.spec_from_file_location('recipe', path)
  if module_spec is None or module_spec.loader is None:
    raise ValueError(f'{where}: {path!r} is not a Python recipe file')
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise ValueError(f'{where}: {path!r} has no get_config(arg); a recipe is a file such as '
                     'configs/demo.py')
  try:
    return module.get_config(arg) if arg else module.get_config()
  except ValueError as e:  # a recipe argument it refuses
    raise ValueError(f'{where}: {e}') from e


def set_value(config, key: str, value, where: str) -> None:
  """config.<dotted key> = value, as --config.key=value sets it; an unknown key, or a value
  of another type, is a ValueError naming `where`."""
  *parents, leaf = str(key).split('.')
  node = config
  for name in parents:
    if name not in node:
      raise ValueError(f'{where}: the config has no {name!r} (in {key!r})')
    node = node[name]
  if leaf not in node:
    raise ValueError(f'{where}: the config has no {leaf!r} (in {key!r})')
  try:
    node[leaf] = value  # ConfigDict refuses a value of another type
  except TypeError as e:
    raise ValueError(f'{where}: {value!r} does not fit {key!r} ({e})') from None
