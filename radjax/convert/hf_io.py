"""Read/write HF model directories (config.json + weights) and single checkpoint files.

Safetensors is preferred and needs no torch. PyTorch `.bin` / `.pth` / `.pt` files are
read with `torch.load(weights_only=True)` only: tensors, plain containers and numbers.
A file that needs anything else unpickled is refused, never executed.
"""
import copy
import glob
import os
import pickle
import re

import ml_dtypes
import numpy as np
from safetensors import numpy as st_numpy

from radjax.convert.common import ConversionError
from radjax.core import files as files_lib

DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}  # never float16
TORCH_SUFFIXES = ('.bin', '.pth', '.pt')
# Keys under which training code nests the weights (LAVIS / MiniGPT-4: 'model').
_WRAPPERS = ('model', 'state_dict')


def _to_numpy(name: str, path: str, t) -> np.ndarray:
  import torch
  if not isinstance(t, torch.Tensor):
    raise ConversionError(f'{path}: entry {name!r} is a {type(t).__name__}, not a tensor')
  t = t.detach().cpu().contiguous()
  if t.dtype == torch.bfloat16:  # numpy has no bf16: reinterpret the bits
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class _Inert:
  """Stands in for a class a checkpoint names but whose instances it never needs (see
  load_torch_file's `inert_prefixes`): nothing is imported, a call keeps its arguments."""

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs = args, kwargs


def _torch_load(path: str, inert: tuple[str, ...]):
  """torch.load(weights_only=True), with the classes named in `inert` (full dotted names)
  read as _Inert."""
  import torch
  if not inert:
    return torch.load(path, map_location='cpu', weights_only=True)
  with torch.serialization.safe_globals([(_Inert, name) for name in inert]):
    return torch.load(path, map_location='cpu', weights_only=True)


def _refused(path: str, e: Exception) -> ConversionError:
  """What weights_only's refusal of `path` says, in radjax's words."""
  text = str(e)
  found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', text)
  if found:
    return ConversionError(f'{path}: refused, it needs arbitrary unpickling to load '
                           f'({found.group(1)}); convert it to safetensors where you trust it')
  found = re.search(r'WeightsUnpickler error: \s*(.+)', text)
  detail = found.group(1).strip() if found else text.splitlines()[0]
  return ConversionError(f'{path}: torch.load(weights_only=True) cannot read it ({detail}): '
                         'not a PyTorch checkpoint, or one that needs more than tensors '
                         'unpickled (convert that to safetensors where you trust it)')


def load_torch_file(path: str, inert_prefixes: tuple[str, ...] = ()) -> dict:
  """{name: numpy array} of a PyTorch checkpoint file, read with `weights_only=True`.
  A dict nesting the weights under 'model' or 'state_dict' (LAVIS, MiniGPT-4) is
  unwrapped; the rest of it (optimizer, epoch, ...) is not read further.
  `inert_prefixes`: classes whose dotted names start so are read as inert stand-ins, never
  imported or run (Lightning's callback classes, by which old checkpoints key their
  callbacks' states beside the weights); any other class is refused as before."""
  import torch
  inert: tuple[str, ...] = ()
  while True:
    try:
      obj = _torch_load(path, inert)
      break
    except pickle.UnpicklingError as e:  # weights_only met something beyond tensors
      found = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
      name = found.group(1) if found else ''
      if not (inert_prefixes and name.startswith(inert_prefixes)) or name in inert:
        raise _refused(path, e) from None
      inert += (name,)  # one more stand-in, then read again
    except (RuntimeError, EOFError, KeyError, ValueError) as e:  # torch's own words on bytes
      raise ConversionError(f'{path}: not a readable PyTorch checkpoint '
                            f'({type(e).__name__}: {e})') from None
  if not isinstance(obj, dict):
    raise ConversionError(f'{path}: holds a {type(obj).__name__}, not a dict of tensors')
  if not all(isinstance(v, torch.Tensor) for v in obj.values()):
    inner = [k for k in _WRAPPERS if isinstance(obj.get(k), dict)]
    if not inner:
      raise ConversionError(f'{path}: not a dict of tensors, and no {_WRAPPERS} entry holding '
                            f'one (keys: {sorted(map(str, obj))[:10]})')
    obj = obj[inner[0]]
  return {str(k): _to_numpy(str(k), path, v) for k, v in obj.items()}


def load_state_dict_file(path: str) -> dict:
  """{name: numpy array} of one weights file: `.safetensors`, or PyTorch (`.bin`, `.pth`,
  `.pt`) read safely."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  if path.endswith('.safetensors'):
    return load_safetensors(path)
  if path.endswith(TORCH_SUFFIXES):
    return load_torch_file(path)
  raise ConversionError(f'{path}: unknown weights format; expected .safetensors or one of '
                        f'{TORCH_SUFFIXES}')


def load_safetensors(path: str) -> dict:
  """{name: numpy array} of a .safetensors file; a damaged one (an interrupted download) is
  an error naming it."""
  try:
    return st_numpy.load_file(path)
  except Exception as e:  # safetensors' own error class is a bare Exception
    raise ConversionError(f'{path}: not a readable safetensors file ({e}); a partial '
                          'download? Fetch it again') from None


def _indexed_shards(path: str, index_name: str) -> list[str] | None:
  """The shards the directory's `index_name` lists (all present), or None without one."""
  index = os.path.join(path, index_name)
  if not os.path.exists(index):
    return None
  raw = files_lib.read_json(index, ConversionError)
  weight_map = raw.get('weight_map') if isinstance(raw, dict) else None
  if not isinstance(weight_map, dict):
    raise ConversionError(f'{index}: no weight_map')
  files = [os.path.join(path, f) for f in sorted(set(weight_map.values()))]
  absent = [os.path.basename(f) for f in files if not os.path.exists(f)]
  if absent:
    raise FileNotFoundError(f'{index} lists shards that are absent: {absent}')
  return files


def _weight_files(path: str) -> list[str]:
  """The directory's weight files as transformers picks them: model.safetensors, else the
  shards model.safetensors.index.json lists (a missing one is named), else its other
  safetensors, else its `pytorch_model*.bin` (as their index lists them, when there is
  one). Other safetensors beside the model (a PEFT adapter, Mistral's consolidated copy)
  are not read."""
  if os.path.exists(os.path.join(path, 'model.safetensors')):
    return [os.path.join(path, 'model.safetensors')]
  files = _indexed_shards(path, 'model.safetensors.index.json')
  if files:
    return files
  files = sorted(glob.glob(os.path.join(path, '*.safetensors')))
  if files:
    return files
  files = _indexed_shards(path, 'pytorch_model.bin.index.json')
  if files:
    return files
  files = sorted(glob.glob(os.path.join(path, 'pytorch_model*.bin')))
  if not files:
    raise FileNotFoundError(f'{path}: no *.safetensors or pytorch_model*.bin weights')
  return files


def load_hf_config(path: str):
  """The transformers config of a local directory's config.json (its class picked by
  model_type from transformers itself; no remote code)."""
  import transformers

  config_path = os.path.join(path, 'config.json')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such file or directory' if not os.path.exists(path)
                            else f'{path}: not a directory')
  raw = files_lib.read_json(config_path, ConversionError)
  model_type = raw.get('model_type') if isinstance(raw, dict) else None
  if model_type not in transformers.CONFIG_MAPPING:
    raise ConversionError(f'{config_path}: unknown model_type={model_type!r}')
  return transformers.CONFIG_MAPPING[model_type].from_pretrained(path)


def load_hf_dir(path: str):
  """(transformers config, {name: numpy array}) from a local HF model directory: its
  safetensors, else its PyTorch `pytorch_model*.bin` shards (read safely)."""
  hf_config = load_hf_config(path)
  state_dict = {}
  for fn in _weight_files(path):
    for name, arr in load_state_dict_file(fn).items():
      if name in state_dict:
        raise ConversionError(f'{path}: tensor {name!r} appears in more than one shard')
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
  config_path = os.path.join(path, 'config.json')
  written = files_lib.read_json(config_path)
  _add_legacy_rope_keys(written)
  files_lib.write_json_atomic(config_path, written)


def _add_legacy_rope_keys(cfg: dict) -> None:
  """transformers < 5 ignores `rope_parameters` and reads rope_theta (GPT-NeoX:
  rotary_emb_base, rotary_pct) at the top level, falling back to its defaults without a
  word: a Qwen2 (theta 1e6) or GPT-NeoX export would give other logits there. 5.x reads
  `rope_parameters` and ignores these. Nested configs (Llava's text_config) too."""
  rope = cfg.get('rope_parameters')
  if isinstance(rope, dict) and rope.get('rope_type') == 'default' and 'rope_theta' in rope:
    cfg.setdefault('rope_theta', rope['rope_theta'])
    if cfg.get('model_type') == 'gpt_neox':
      cfg.setdefault('rotary_emb_base', rope['rope_theta'])
      cfg.setdefault('rotary_pct', rope.get('partial_rotary_factor', 1.0))
  for value in cfg.values():
    if isinstance(value, dict):
      _add_legacy_rope_keys(value)
