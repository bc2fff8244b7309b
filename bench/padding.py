r"""Padding share of training batches with and without sequence packing (config.data.pack).

  python bench/padding.py [--batches 200] [--pack_max_examples 4] \
      [--config configs/demo.py --config configs/demo.py:task=lm ...]

For each recipe (default: the demo, its task=lm form and RadVLM's tiny report-task
mixture, all on the embedded default data), reads `--batches` training batches of one
process (the real Grain pipeline: shuffle, tasks, tokens, mixture) with pack off and on
and prints one table: the share of the batch's B x T token slots that hold no real token
of any example, and examples per row. A token is real up to an example's last
loss-bearing target (what packing keeps; later tokens change no loss).
A recipe with the auxiliary label loss or a per-example target cap (label_loss_weight > 0,
max_target_tokens > 0: packing supports neither) is measured packed with them off; its
data are otherwise the same.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from radjax import run  # noqa: E402
from radjax.core import recipe  # noqa: E402
from radjax.data import pipeline  # noqa: E402

DEFAULT_CONFIGS = ('configs/demo.py', 'configs/demo.py:task=lm', 'configs/radvlm.py:size=tiny')


def with_packing(config, pack: bool, pack_max_examples: int = 0):
  """(config, note): packing on or off; what packing refuses (the label loss, a target cap
  per example) is turned off and named in the note. The data are otherwise the same."""
  note = ''
  if pack and config.data.get('label_loss_weight', 0.0):
    config.data.label_loss_weight, note = 0.0, ' (label loss off)'
    config.data.box_token_weight = 0.0
  if pack and config.data.get('max_target_tokens', 0):
    config.data.max_target_tokens, note = 0, note + ' (no target cap)'
  config.data.pack = pack
  if pack_max_examples:
    config.data.pack_max_examples = pack_max_examples
  return config, note


def measure(config, batches: int) -> dict:
  """Padding share and examples per row over `batches` batches of process 0 of 1."""
  task = run.make_task(config)
  ds = pipeline.train_dataset(config, task.processor, config.data.train_split, 0, 1)
  it = pipeline.make_iterator(ds, 0)
  real = slots = examples = rows = 0
  for _ in range(batches):
    b = next(it)
    slots += b['tokens'].size
    rows += b['tokens'].shape[0]
    if 'segment_ids' in b:
      real += int(np.count_nonzero(b['segment_ids']))
      examples += int(np.count_nonzero(b['source'] >= 0))
    else:
      weighted = b['loss_mask'] > 0
      last = b['tokens'].shape[1] - np.argmax(weighted[:, ::-1], axis=1)  # last weighted + 1
      real += int(np.sum(np.where(weighted.any(axis=1), last, 0)))
      examples += b['tokens'].shape[0]
  return {'padding': 1 - real / slots, 'per_row': examples / rows, 'examples': examples}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', action='append', help='recipe[:arg] (repeatable)')
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--pack_max_examples', type=int, default=0,
                      help="0: the recipe's config.data.pack_max_examples")
  args = parser.parse_args(argv)
  rows = []
  for spec in args.config or DEFAULT_CONFIGS:
    for pack in (False, True):
      config, note = with_packing(recipe.load(spec), pack, args.pack_max_examples)
      t = time.time()
      m = measure(config, args.batches)
      k = f'<={config.data.pack_max_examples}' if pack else '1'
      rows.append((spec, f"{'on' if pack else 'off'}{note}", config.data.max_len,
                   config.train.batch_size, k, m, time.time() - t))
  print(f'{args.batches} training batches per row (one process)')
  print(f"{'config':32} {'pack':20} {'T':>5} {'B':>4} {'max/row':>7} {'padding':>8} "
        f"{'examples/row':>12} {'examples':>9} {'s':>6}")
  for spec, pack, t, b, k, m, secs in rows:
    print(f"{spec:32} {pack:20} {t:5d} {b:4d} {k:>7} {m['padding']:8.1%} "
          f"{m['per_row']:12.2f} {m['examples']:9d} {secs:6.1f}")


if __name__ == '__main__':
  main()
