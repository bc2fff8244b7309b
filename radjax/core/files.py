"""Reading the small JSON files radjax trusts (workdir and HF configs) with errors that
name the file, writing them whole, and keeping a command's outputs off its inputs."""
import json
import os


def read_json(path: str, error: type[Exception] = ValueError):
  """The JSON in `path`; non-UTF-8 or damaged text raises `error` naming the file."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except UnicodeDecodeError as e:
    raise error(f'{path}: not UTF-8 text (byte {e.start})') from None
  except json.JSONDecodeError as e:
    raise error(f'{path}: not valid JSON ({e.msg} at line {e.lineno}); truncated or '
                'damaged?') from None


def write_text_atomic(path: str, text: str) -> None:
  """`text` into `path`, whole or not at all: a kill mid-write leaves the old file. A
  failed write (a full disk) names the file, and leaves no .tmp."""
  try:
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(path + '.tmp', path)
  except OSError as e:
    if os.path.exists(path + '.tmp'):
      os.remove(path + '.tmp')
    raise named(e, path) from e


def named(error: OSError, path: str) -> OSError:
  """An OSError that names `path` (a failed write() carries no file name)."""
  if error.filename:
    return error
  return type(error)(error.errno, error.strerror or str(error), path)


def write_json_atomic(path: str, value) -> None:
  write_text_atomic(path, json.dumps(value, indent=1))


def _same_file(a: str, b: str) -> bool:
  try:
    return os.path.samefile(a, b)
  except OSError:  # one does not exist yet
    return os.path.realpath(a) == os.path.realpath(b)


def check_outputs_apart(outputs: dict, inputs: dict, error: type[Exception] = ValueError):
  """Raises `error` when an output path ({flag: path}; None: not given) is one of the
  inputs or an earlier output: writing it would destroy what the command reads (hours of
  generated reports) or what it wrote a moment before."""
  seen = [(flag, path) for flag, path in inputs.items() if path]
  for flag, path in outputs.items():
    if not path:
      continue
    for other, other_path in seen:
      if _same_file(path, other_path):
        raise error(f'{flag} {path} is the same file as {other}; it would be overwritten. '
                    'Choose another path')
    seen.append((flag, path))
