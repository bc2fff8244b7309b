"""Read/write HF model directories (config.json + safetensors) without torch."""
import copy
import glob
import os

import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from radjax.core import files as files_lib

DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}  # never float16


def load_hf_dir(path: str):
  """(transformers config, {name: numpy array}) from a local HF model directory."""
  import transformers

  from radjax.convert.common import ConversionError
  config_path = os.path.join(path, 'config.json')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such directory')
  raw = files_lib.read_json(config_path, ConversionError)
  model_type = raw.get('model_type') if isinstance(raw, dict) else None
  if model_type not in transformers.CONFIG_MAPPING:
    raise ConversionError(f'{config_path}: unknown model_type={model_type!r}')
  # The config class is picked by model_type from transformers itself; no remote code.
  hf_config = transformers.CONFIG_MAPPING[model_type].from_pretrained(path)
  files = sorted(glob.glob(os.path.join(path, '*.safetensors')))
  if not files:
    raise FileNotFoundError(f'{path}: no *.safetensors files (pickled .bin is not read)')
  state_dict = {}
  for fn in files:
    for name, arr in st_numpy.load_file(fn).items():
      if name in state_dict:
        raise ValueError(f'{path}: tensor {name!r} appears in more than one shard')
      state_dict[name] = arr
  return hf_config, state_dict


def save_hf_dir(path: str, hf_config, state_dict: dict, dtype: str = 'float32') -> None:
  """Writes model.safetensors + config.json loadable by `*ForCausalLM.from_pretrained`."""
  if dtype not in DTYPES:
    raise ValueError(f'dtype={dtype!r} is not supported; choose from {sorted(DTYPES)}')
  os.makedirs(path, exist_ok=True)
  np_dtype = DTYPES[dtype]
  tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(np_dtype))
             for k, v in state_dict.items()}
  st_numpy.save_file(tensors, os.path.join(path, 'model.safetensors'),
                     metadata={'format': 'pt'})  # transformers expects format=pt
  hf_config = copy.deepcopy(hf_config)  # the caller's config stays untouched
  hf_config.dtype = dtype
  hf_config.save_pretrained(path)
