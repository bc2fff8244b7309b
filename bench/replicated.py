r"""Which parameters fsdp does not split evenly, and what they cost per device.

  python bench/replicated.py --config configs/llava_tinyllama.py --devices 8

From abstract shapes (nothing allocated): every parameter whose per-device shard is larger
than its size / devices (replicated, or an axis that does not divide), with its bytes per
device and the excess over an even split; optimizer moments follow their parameter's
sharding, so AdamW state adds twice the parameters' excess.
"""
import os
import sys

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import memory  # noqa: E402

FLAGS = flags.FLAGS


def uneven_leaves(params, n: int) -> list[dict]:
  """Parameters (ShapeDtypeStructs with shardings) held by one device beyond size / n."""
  out = []
  for path, x in jax.tree_util.tree_leaves_with_path(params):
    shard = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    even = math.prod(x.shape) * x.dtype.itemsize / n
    if shard > even * 1.0001:
      out.append(dict(path=jax.tree_util.keystr(path, simple=True, separator='/'),
                      shape=tuple(x.shape), spec=str(x.sharding.spec), bytes=shard,
                      excess=shard - even))
  return out


def main(argv):
  del argv
  exp = memory.experiment(FLAGS.config, FLAGS.devices)
  leaves = uneven_leaves(exp.state.params, FLAGS.devices)
  total = memory.per_device_bytes(exp.state.params)
  excess = sum(x['excess'] for x in leaves)
  print(f'{len(leaves)} parameters not split evenly over {FLAGS.devices} devices: '
        f'{excess / 2**20:.2f} MiB per device beyond an even split (params per device '
        f'{total / 2**20:.1f} MiB)')
  print('| parameter | shape | sharding | bytes per device | beyond even split |')
  print('|---|---|---|---|---|')
  for x in sorted(leaves, key=lambda x: -x['excess'])[:FLAGS.top]:
    print(f'| `{x["path"]}` | {x["shape"]} | `{x["spec"]}` | {x["bytes"]:,} | '
          f'{x["excess"]:,.0f} |')


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_integer('devices', 8, 'Devices (mesh fsdp = devices).')
  flags.DEFINE_integer('top', 20, 'Rows printed (largest excess first).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
