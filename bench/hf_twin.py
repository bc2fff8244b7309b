"""The Hugging Face transformers + torch twin of a radjax model, for side-by-side benchmarks
(bench/vs_hf_train.py, bench/vs_hf_generate.py): the same architecture built locally from
the radjax config (no downloads), given the radjax weights through radjax/convert, so both
sides compute the same function. Also the timing and table helpers both scripts share.
"""
import dataclasses
import statistics
import time

import jax
import numpy as np
import torch
import transformers

from radjax import convert
from radjax.convert import llava

BOS, EOS, PAD = 1, 2, 0  # token ids the HF configs carry (generation reads them)


def torch_device() -> str:
  return 'cuda' if torch.cuda.is_available() else 'cpu'


def start(torch_threads: int, extra: str = '') -> str:
  """Sets torch's thread count (0: its default), prints both stacks' devices; the torch
  device."""
  if torch_threads:
    torch.set_num_threads(torch_threads)
  device = torch_device()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind} ({jax.default_backend()}); '
        f'torch {torch.__version__} on {device}, {torch.get_num_threads()} threads{extra}')
  return device


def torch_dtype(name: str) -> torch.dtype:
  return {'float32': torch.float32, 'bfloat16': torch.bfloat16}[name]


def count_jax(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def count_torch(model) -> int:
  return sum(p.numel() for p in model.parameters())


def _hub_to_memory(name: str) -> str:
  """llava.hf_from_params writes the hub layout; transformers 5 holds a Llava in memory as
  model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head."""
  for hub, memory in (('vision_tower.vision_model.', 'model.vision_tower.'),
                      ('multi_modal_projector.', 'model.multi_modal_projector.'),
                      ('language_model.model.', 'model.language_model.'),
                      ('language_model.lm_head.weight', 'lm_head.weight')):
    if name.startswith(hub):
      return memory + name[len(hub):]
  raise ValueError(f'HF Llava tensor {name!r} has no in-memory name')


# radjax VLM top-level modules -> the in-memory HF Llava modules holding the same weights.
HF_MODULES = {'vision': ('model.vision_tower',),
              'projector': ('model.multi_modal_projector',),
              'llm': ('model.language_model', 'lm_head')}


def freeze(model, modules) -> None:
  """requires_grad=False on the HF modules of the radjax top-level `modules` (what LLaVA's
  recipes do to a frozen tower: no weight gradient, no optimizer state)."""
  for name in modules:
    for hf_name in HF_MODULES[name]:
      for p in model.get_submodule(hf_name).parameters():
        p.requires_grad_(False)


def _load(model, state_dict: dict) -> None:
  """Strict copy of numpy tensors into an HF model (names must match one to one);
  non-persistent buffers (RoPE frequencies) keep their constructed values."""
  want = set(model.state_dict())
  if set(state_dict) != want:
    raise ValueError(f'converted tensors do not match {type(model).__name__}: missing '
                     f'{sorted(want - set(state_dict))[:5]}, extra '
                     f'{sorted(set(state_dict) - want)[:5]}')
  with torch.no_grad():
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32))  # a writable copy
                           for k, v in state_dict.items()}, strict=True)


def hf_llava(vlm_cfg, params=None, device: str = 'cpu', max_positions: int = 4096,
             attn_implementation: str = 'sdpa'):
  """float32 `LlavaForConditionalGeneration` of the radjax VLMConfig on `device`, with the
  radjax VLM params (any auxiliary label head is left out) or HF's random init."""
  llm_cfg = dataclasses.replace(vlm_cfg.llm, max_position_embeddings=max(
      max_positions, vlm_cfg.llm.max_position_embeddings))
  hf_cfg = llava.hf_config_from_vlm(dataclasses.replace(vlm_cfg, llm=llm_cfg), 'llama',
                                    bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
  with torch.device(device):  # built where it runs: random init there is fast
    model = transformers.LlavaForConditionalGeneration._from_config(
        hf_cfg, attn_implementation=attn_implementation, dtype=torch.float32)
  if device == 'meta':
    return model
  if params is not None:
    params = {k: v for k, v in jax.device_get(params).items() if k != 'label_head'}
    exported = llava.hf_from_params(params, vlm_cfg)
    _load(model, {_hub_to_memory(k): v for k, v in exported.items()})
  return model


def hf_decoder(llm_cfg, params=None, device: str = 'cpu', max_positions: int = 4096,
               attn_implementation: str = 'sdpa'):
  """float32 `*ForCausalLM` of the radjax LLMConfig (its export family) on `device`."""
  family = convert.export_family(llm_cfg)
  llm_cfg = dataclasses.replace(llm_cfg, max_position_embeddings=max(
      max_positions, llm_cfg.max_position_embeddings))
  hf_cfg = convert.hf_config_from_llm(llm_cfg, family, bos_token_id=BOS, eos_token_id=EOS,
                                      pad_token_id=PAD)
  with torch.device(device):
    model = transformers.AutoModelForCausalLM.from_config(
        hf_cfg, attn_implementation=attn_implementation, dtype=torch.float32)
  if device == 'meta':
    return model
  if params is not None:
    _load(model, convert.hf_from_params(jax.device_get(params), llm_cfg))
  return model


def sync(device: str) -> None:
  if device == 'cuda':
    torch.cuda.synchronize()


def timed(fn, sync_fn) -> float:
  """Seconds one call of fn takes, the device drained before and after."""
  sync_fn()
  t0 = time.perf_counter()
  fn()
  sync_fn()
  return time.perf_counter() - t0


def median(xs) -> float:
  return statistics.median(xs)


def markdown(headers, rows) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)
