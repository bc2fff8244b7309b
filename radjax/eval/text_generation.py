"""Text-only generation from an LLM workdir (`config.model.kind='llm'`), e.g. one
imported with `python -m radjax.convert from-hf --family llama`.

The params are restored straight into their shards on the configured mesh.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from radjax.core import sharding as sharding_lib
from radjax.core import workdir as workdir_lib
from radjax.data import tokens
from radjax.eval import generate as generate_lib
from radjax.models import factory, llm
from radjax.train import state as state_lib


def load_llm(config, workdir: str):
  """(mesh, rules, Decoder, params) of the workdir's latest checkpoint."""
  mesh = sharding_lib.make_mesh(config.mesh)
  rules = sharding_lib.rules_from_config(config.sharding.rules)
  model = llm.Decoder(factory.llm_config(config.model))
  dummy = (jnp.zeros((1, 1, model.cfg.embed_dim)), jnp.zeros((1, 1), jnp.int32))
  target, _ = state_lib.abstract_params(model, dummy, mesh, rules)
  return mesh, rules, model, workdir_lib.load_params(workdir, target=target)


def tokenizer_for(config):
  from transformers import PreTrainedTokenizerFast
  path = tokens.tokenizer_path(config)
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.data.tokenizer={path!r} does not exist; a text prompt '
                            'needs the tokenizer')
  return PreTrainedTokenizerFast(tokenizer_file=path)


def generate_text(config, workdir: str, prompts: list[str]) -> list[str]:
  """Continuations of `prompts` with config.eval's decoding settings."""
  mesh, rules, model, params = load_llm(config, workdir)
  tokenizer = tokenizer_for(config)
  ids = [tokenizer.encode(p) for p in prompts]
  if any(not p for p in ids):
    raise ValueError('--prompt is empty')
  batch = max(len(ids), mesh.devices.size)  # the batch axis must divide over the mesh
  batch = -(-batch // mesh.devices.size) * mesh.devices.size
  rows = ids + [ids[-1]] * (batch - len(ids))
  length = -(-max(len(p) for p in rows) // 16) * 16
  eos = tokenizer.eos_token_id
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  toks, mask = generate_lib.left_pad(rows, length, pad)
  gen_cfg = generate_lib.config_from_eval(config.eval, (eos,) if eos is not None else (), pad)
  sharding = sharding_lib.batch_sharding(mesh, rules, 2)
  with sharding_lib.activation_rules(mesh, rules):
    out, _ = generate_lib.generate(model, params, jax.device_put(toks, sharding),
                                   jax.device_put(mask, sharding), None, gen_cfg,
                                   jax.random.key(config.seed))
  out = np.asarray(jax.device_get(out))[:len(prompts)]
  texts = []
  for row in out:
    row = [int(t) for t in row]
    if eos is not None and eos in row:
      row = row[:row.index(eos)]
    texts.append(generate_lib.cut_at_stop_strings(tokenizer.decode(row),
                                                  gen_cfg.stop_strings))
  return texts
