r"""Report-generation benchmark: prefill + KV-cache decoding time and tokens/s.

  python bench/generate.py --config configs/demo.py [--runs 3] \
      [--config.eval.decoding=beam --config.eval.num_beams=4 --config.eval.batch_size=16]

Random params of the config's shapes and a synthetic prompt of the eval layout
(BOS, user, image placeholders, instruction, assistant); every run generates
config.eval.max_new_tokens tokens per row (no early stop), so timings do not depend
on what the model says.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax import tasks  # noqa: E402
from radjax.core import sharding  # noqa: E402
from radjax.eval.decoding import generate as generate_lib  # noqa: E402
from radjax.train import setup  # noqa: E402

config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
flags.DEFINE_integer('runs', 3, 'Timed runs (after one compile run).')
FLAGS = flags.FLAGS
PROMPT_TEXT_TOKENS = 16  # the demo instruction plus turn markers is about this long


def main(argv):
  del argv
  config = FLAGS.config
  if config.model.image_token_id < 0:  # no tokenizer here: synthetic prompts
    config.model.image_token_id = 4
  exp = setup.build(config, tasks.TASKS['vlm'](config, None))
  model, params = exp.model, exp.state.params
  b = config.eval.batch_size
  n_img = model.cfg.tokens_per_image * config.data.max_images
  prompt = np.full((b, n_img + PROMPT_TEXT_TOKENS), 10, np.int32)
  prompt[:, 2:2 + n_img] = model.cfg.image_token_id
  mask = np.ones_like(prompt, bool)
  v = config.model.vision
  images = np.zeros((b, config.data.max_images, v.image_size, v.image_size, v.num_channels),
                    np.float32)
  gen_cfg = generate_lib.config_from_eval(config.eval, stop_ids=(), pad_id=0)
  bs = exp.batch_shardings
  inputs = [jax.device_put(x, bs[k]) for x, k in ((prompt, 'tokens'), (mask, 'tokens'),
                                                  (images, 'images'))]
  rng = jax.random.key(0)

  def run():
    with sharding.activation_rules(exp.mesh, exp.rules):
      ids, _ = generate_lib.generate(model, params, *inputs, gen_cfg, rng)
    return jax.block_until_ready(ids)

  t0 = time.perf_counter()
  run()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(FLAGS.runs):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  best = min(times)
  new = b * gen_cfg.max_new_tokens
  rows = b * (gen_cfg.num_beams if gen_cfg.strategy == 'beam' else 1)
  print(f'{gen_cfg.strategy} (beams={gen_cfg.num_beams if gen_cfg.strategy == "beam" else 1}) '
        f'batch={b} prompt={prompt.shape[1]} new={gen_cfg.max_new_tokens} '
        f'dtype={config.runtime.dtype} devices={jax.device_count()} '
        f'backend={jax.default_backend()}')
  print(f'first run (compile + run) {compile_s:.1f} s; best of {FLAGS.runs}: {best * 1e3:.1f} ms, '
        f'{best * 1e3 / gen_cfg.max_new_tokens:.2f} ms/step, {new / best:,.0f} new tokens/s '
        f'({rows} decoded rows)')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
