"""Reading the small JSON files radjax trusts (workdir and HF configs) with errors that
name the file."""
import json


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
