"""Decoder weight conversion dispatched by family: the LLMConfig picks the HF table."""
from radjax.convert import gpt_neox, llama
from radjax.convert.hf_config import export_family
from radjax.models import llm

# HF family -> module with params_from_hf / hf_from_params / param_shapes.
TABLES = {'llama': llama, 'qwen2': llama, 'gpt_neox': gpt_neox}


def table(cfg: llm.LLMConfig):
  return TABLES[export_family(cfg)]


def params_from_hf(state_dict: dict, cfg: llm.LLMConfig, scan: bool) -> dict:
  """HF state dict (name -> numpy) -> radjax f32 params tree, for any supported family."""
  return table(cfg).params_from_hf(state_dict, cfg, scan)


def hf_from_params(params: dict, cfg: llm.LLMConfig) -> dict:
  """radjax params tree (scanned or not) -> HF state dict of `export_family(cfg)`."""
  return table(cfg).hf_from_params(params, cfg)
