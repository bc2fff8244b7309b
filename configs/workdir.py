r"""The config a workdir was trained or imported with (its config.json over base.py).

  python main.py --config configs/workdir.py:WORKDIR --workdir WORKDIR --mode=generate ...
"""
from radjax.core import workdir


def get_config(arg: str = ''):
  if not arg:
    raise ValueError('configs/workdir.py needs the workdir: --config configs/workdir.py:DIR')
  return workdir.load_config(arg)
