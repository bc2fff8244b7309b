"""Text-only generation with a bare decoder (an LLM workdir, trained by task 'lm' or
imported with `python -m radjax.convert from-hf --family llama`)."""
import jax
import numpy as np

from radjax.core import sharding as sharding_lib
from radjax.eval.decoding import generate as generate_lib


def generate_text(model, params, tokenizer, prompts: list[str], eval_cfg, mesh, rules,
                  seed: int = 0) -> list[str]:
  """Continuations of `prompts` with `eval_cfg`'s decoding settings, on `mesh`."""
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
  gen_cfg = generate_lib.config_from_eval(eval_cfg, (eos,) if eos is not None else (), pad)
  sharding = sharding_lib.batch_sharding(mesh, rules, 2)
  with sharding_lib.activation_rules(mesh, rules):
    out, _ = generate_lib.generate(model, params, jax.device_put(toks, sharding),
                                   jax.device_put(mask, sharding), None, gen_cfg,
                                   jax.random.key(seed))
  out = np.asarray(jax.device_get(out))[:len(prompts)]
  texts = []
  for row in out:
    row = [int(t) for t in row]
    if eos is not None and eos in row:
      row = row[:row.index(eos)]
    texts.append(generate_lib.cut_at_stop_strings(tokenizer.decode(row),
                                                  gen_cfg.stop_strings))
  return texts
