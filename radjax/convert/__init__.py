"""Conversion between radjax params and Hugging Face checkpoints."""
from radjax.convert.hf_config import export_family, hf_config_from_llm, llm_config_from_hf
from radjax.convert.hf_io import load_hf_dir, save_hf_dir
from radjax.convert.llm_families import hf_from_params, params_from_hf

__all__ = ['hf_config_from_llm', 'llm_config_from_hf', 'load_hf_dir', 'save_hf_dir',
           'hf_from_params', 'params_from_hf', 'export_family']
