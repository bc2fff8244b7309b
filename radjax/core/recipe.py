"""Recipe files by spec: 'path/to/recipe.py[:arg]' -> its get_config(arg), as main.py's
--config reads it."""
import importlib.util
import os


def load(spec: str):
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'recipe {spec!r}: no file {path!r} (paths are relative to the '
                            'directory main.py runs in)')
  module_spec = importlib.util.spec_from_file_location('recipe', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


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
