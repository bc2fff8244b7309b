r"""Greedy decoding, radjax vs HF transformers `generate`, on the SAME decoder weights.

  python bench/vs_hf_generate.py --config configs/demo.py [--batches 1,8,32] [--runs 3]
  python bench/vs_hf_generate.py --config configs/llava_tinyllama.py --hbm_gbps 4800   # H200
      (3350 for an H100 SXM)

The config's decoder (config.model.llm; the 1.1B LLaMA of llava_tinyllama, the demo's tiny
one) with random radjax weights, converted to its HF *ForCausalLM by radjax/convert. Every
row decodes exactly --new_tokens tokens (radjax: EOS suppressed, as HF's min_new_tokens =
max_new_tokens does), after a prompt of --prompt_len random ids (default: the eval layout,
image placeholders + 16, as text). radjax: radjax/eval/decoding `generate` (jitted, KV
cache). HF: `generate` with the dynamic cache and with `cache_implementation="static"`
(which transformers compiles on CUDA by itself). Params and compute in config.runtime.dtype
unless --params_dtype says otherwise. The sides run in turn, --runs rounds; medians.

New tokens/s counts prefill too (one call, start to end). The bound is the HBM roofline of
the decode steps: per step every weight is read once (the input embedding table only
B rows, left out) plus the KV cache at its mean length; --hbm_gbps x 1e9 / those bytes =
decode steps/s, x B = new tokens/s. `same ids`: share of generated ids equal to radjax's
(1.0 in float32: the same function; bf16 rounding lets greedy paths part).
"""
import os
import sys

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # torch shares the GPU
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import hf_twin  # noqa: E402
from radjax.eval.decoding import generate as generate_lib  # noqa: E402
from radjax.models import factory, llm  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (not at import: the tests import both scripts)."""
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('batches', ['1', '8', '32'], 'Batch sizes (rows decoded at once).')
  flags.register_validator('batches', lambda v: all(b.isdigit() and int(b) > 0 for b in v),
                           '--batches: positive integers, e.g. 1,8,32')
  flags.DEFINE_integer('new_tokens', 0, 'New tokens per row (0: config.eval.max_new_tokens).')
  flags.DEFINE_integer('prompt_len', 0, 'Prompt tokens (0: image tokens + 16, the eval layout).')
  flags.DEFINE_integer('runs', 3, 'Timed rounds (one call per side each) after warm-up.')
  flags.DEFINE_string('params_dtype', '', "'float32' | 'bfloat16' ('' = config.runtime.dtype).")
  flags.DEFINE_float('hbm_gbps', 0.0, 'Memory bandwidth in GB/s for the bound (H100 SXM 3350, '
                     'H200 4800); 0 leaves the bound out.')
  flags.DEFINE_bool('static', True, "Also time HF with cache_implementation='static'.")
  flags.DEFINE_integer('torch_threads', 0, 'torch intra-op threads (0: its default, the '
                       'core count); 1 is faster on a CPU other jobs share.')


SUPPRESSED = (hf_twin.EOS,)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def decoder(config, params_dtype: str = ''):
  """(radjax Decoder, its random params cast to params_dtype, LLMConfig)."""
  cfg = factory.llm_config(config.model)
  model = llm.Decoder(cfg, factory.runtime(config, 'llm'))
  if config.runtime.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError("config.runtime.attention_impl='cudnn' needs a GPU; add "
                     '--config.runtime.attention_impl=xla')
  init = jax.jit(lambda k: nn.meta.unbox(model.init(
      k, jnp.zeros((1, 1, cfg.embed_dim)), jnp.zeros((1, 1), jnp.int32))['params']))
  params = init(jax.random.key(config.seed))
  dtype = DTYPES[params_dtype or config.runtime.dtype]
  return model, jax.tree.map(lambda x: x.astype(dtype), params), cfg


def prompt_length(config) -> int:
  from radjax import tasks
  if config.task != 'vlm':
    return 32
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.model.image_token_id < 0:  # no tokenizer: any id, it only counts tokens
      config.model.image_token_id = 4
  cfg = tasks.TASKS['vlm'](config, None).model_cfg
  return cfg.tokens_per_image * config.data.max_images + 16


def prompt(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  out = rng.integers(10, min(vocab, 1000), (batch, length)).astype(np.int32)
  out[:, 0] = hf_twin.BOS
  return out


def radjax_generate(model, params, tokens: np.ndarray, new_tokens: int):
  """() -> generated ids [B, new_tokens] as numpy (blocks)."""
  gen_cfg = generate_lib.GenerationConfig(max_new_tokens=new_tokens, stop_ids=SUPPRESSED,
                                          suppress_ids=SUPPRESSED)
  ids = jnp.asarray(tokens)
  mask = jnp.ones(tokens.shape, bool)
  return lambda: np.asarray(jax.block_until_ready(
      generate_lib.generate(model, params, ids, mask, None, gen_cfg)[0]))


def hf_generate(model, tokens: np.ndarray, new_tokens: int, device: str, static: bool):
  ids = torch.from_numpy(tokens).long().to(device)
  mask = torch.ones_like(ids)
  kw = {'cache_implementation': 'static'} if static else {}

  def run():
    with torch.no_grad():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           eos_token_id=hf_twin.EOS, pad_token_id=hf_twin.PAD, **kw)
    hf_twin.sync(device)
    return out[:, tokens.shape[1]:].cpu().numpy()
  return run


def bound_tokens_per_s(cfg, n_params: int, param_bytes: int, batch: int, prompt_len: int,
                       new_tokens: int, hbm_gbps: float) -> float:
  """Decode-step HBM roofline: weights (input embedding table excepted unless tied) and
  the KV cache at its mean length, read once per step."""
  table = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.embed_dim
  weights = (n_params - table) * param_bytes
  kv = (batch * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.dim_per_head
        * (prompt_len + new_tokens / 2) * param_bytes)
  return batch * hbm_gbps * 1e9 / (weights + kv)


def compare(config, batches, new_tokens: int = 0, prompt_len: int = 0, runs: int = 3,
            params_dtype: str = '', hbm_gbps: float = 0.0, static: bool = True,
            on_batch=lambda rows: None) -> list[dict]:
  """One row per batch size and side; `on_batch(rows)` gets each batch size's rows as soon
  as they are measured (a run cut at its time limit keeps the finished ones)."""
  device = hf_twin.torch_device()
  new_tokens = new_tokens or config.eval.max_new_tokens
  prompt_len = prompt_len or prompt_length(config)
  model, params, cfg = decoder(config, params_dtype)
  dtype_name = params_dtype or config.runtime.dtype
  hf = hf_twin.hf_decoder(cfg, params, device, prompt_len + new_tokens)
  hf = hf.to(hf_twin.torch_dtype(dtype_name)).eval()
  n_ours, n_hf = hf_twin.count_jax(params), hf_twin.count_torch(hf)
  param_bytes = jnp.dtype(DTYPES[dtype_name]).itemsize
  rows = []
  for b in batches:
    tokens = prompt(b, prompt_len, cfg.vocab_size)
    sides = {'radjax': radjax_generate(model, params, tokens, new_tokens),
             'HF dynamic cache': hf_generate(hf, tokens, new_tokens, device, False)}
    if static:
      sides['HF static cache'] = hf_generate(hf, tokens, new_tokens, device, True)
    ids = {name: run() for name, run in sides.items()}  # warm-up: compiles
    for name in ('HF static cache',) if static else ():  # its compile takes a second call
      sides[name]()
    times = {name: [] for name in sides}
    for _ in range(runs):
      for name, run in sides.items():
        times[name].append(hf_twin.timed(run, lambda: hf_twin.sync(device)))
    bound = (bound_tokens_per_s(cfg, n_ours, param_bytes, b, prompt_len, new_tokens, hbm_gbps)
             if hbm_gbps else 0.0)
    ours_dt = hf_twin.median(times['radjax'])
    for name in sides:
      dt = hf_twin.median(times[name])
      rate = b * new_tokens / dt
      rows.append(dict(batch=b, side=name, params=n_ours if name == 'radjax' else n_hf,
                       seconds=dt, times=times[name], new_tokens_per_s=rate,
                       radjax_vs=dt / ours_dt, bound=bound,
                       same_ids=float(np.mean(ids[name] == ids['radjax'])),
                       prompt=prompt_len, new=new_tokens, dtype=dtype_name))
    on_batch(rows[-len(sides):])
  return rows


HEADERS = ['batch', 'side', 'params', 'prompt + new', 'dtype', 'time (median)',
           'new tokens/s', 'radjax speed vs this', 'HBM bound tokens/s', '% of bound',
           'same ids']


def cells(r: dict) -> list:
  bound = f"{r['bound']:,.0f}" if r['bound'] else '-'
  pct = f"{100 * r['new_tokens_per_s'] / r['bound']:.1f} %" if r['bound'] else '-'
  return [r['batch'], r['side'], f"{r['params'] / 1e6:.2f}M", f"{r['prompt']} + {r['new']}",
          r['dtype'], f"{r['seconds'] * 1e3:,.1f} ms", f"{r['new_tokens_per_s']:,.0f}",
          f"{r['radjax_vs']:.2f}x", bound, pct, f"{r['same_ids']:.3f}"]


def table(rows) -> str:
  return hf_twin.markdown(HEADERS, [cells(r) for r in rows])


def print_rows(rows):
  """A batch size's timings and its table rows (under the header main printed)."""
  for r in rows:
    print(f"  batch {r['batch']} {r['side']}: " + ' '.join(f'{t * 1e3:.0f}' for t in r['times'])
          + ' ms')
  print(table(rows).split('\n', 2)[2], flush=True)


def main(argv):
  del argv
  hf_twin.start(FLAGS.torch_threads)
  print(table([]), flush=True)  # the header; each batch size's rows follow as measured
  compare(FLAGS.config, [int(b) for b in FLAGS.batches], FLAGS.new_tokens, FLAGS.prompt_len,
          FLAGS.runs, FLAGS.params_dtype, FLAGS.hbm_gbps, FLAGS.static, on_batch=print_rows)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
