r"""Seconds per checkpoint save of a replicated state on several devices, with radjax's
orbax array handler (small arrays written whole) or orbax's default (every replicated
array sliced across its replicas: one compiled slice per distinct shape, paid at a run's
first save).

  python bench/checkpoint_save.py [--handler radjax|orbax] [--devices 8] [--leaves 180]

The state is `--leaves` float32 arrays of distinct small shapes (a scan-less model's
parameters and moments look like this), replicated over all devices; four synchronous
saves, the first of which compiles whatever the handler needs.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--handler', choices=('radjax', 'orbax'), default='radjax')
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--leaves', type=int, default=180)
  args = parser.parse_args()
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={args.devices}')
  import jax
  import jax.numpy as jnp
  import numpy as np
  import orbax.checkpoint as ocp

  from radjax.core import checkpoint as checkpoint_lib  # registers radjax's handler
  if args.handler == 'orbax':
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(),
                                            override=True)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('d',))
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {f'p{i}': jax.device_put(jnp.ones((i + 1, 32 + i), jnp.float32), rep)
           for i in range(args.leaves)}
  with tempfile.TemporaryDirectory() as d:
    ckpt = checkpoint_lib.Checkpointer(d, keep=1, use_async=False)
    times = []
    for step in range(4):
      t = time.perf_counter()
      ckpt.save(step, state, force=True)
      times.append(time.perf_counter() - t)
    ckpt.close()
  print(f'handler {args.handler}, {args.devices} devices, {args.leaves} leaves: saves '
        + ', '.join(f'{t:.2f}' for t in times) + ' s')


if __name__ == '__main__':
  main()
