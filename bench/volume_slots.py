r"""What the volume slot switch saves: the VLM's tower (forward and backward, as training
runs it) over a volume batch whose slots are partly empty and shallower than the batch.

  python bench/volume_slots.py --config configs/radfm.py:size=tiny --slots 10 \
      --depths 16,40 --buckets 16,32 [--batch 2] [--steps 10]

--depths: the real depth of each used slot (the others are empty, as RadFM's recipe pads
every example to 10 slots); the batch is config.data.max_slices (else the tower's
max_depth) deep. Rows, as the step ran before session 39 and since, on one process (the
host trims the batch to its bucket, radjax/data/volumes.py trim_depth) and on several
(the batch stays full depth; before, buckets were refused there; now the model picks
each slot's bucket in the program, radjax/models/vlm.py _volume_slots):
  1. several processes, before: every slot at the batch's full depth, one tower call;
  2. one process, before: every slot at the host-trimmed depth, one tower call;
  3. one process, now: slot by slot, empty slots skipped, host-trimmed depth;
  4. several processes, now: slot by slot, empty slots skipped, each at its bucket.
Columns: step time (median), XLA's FLOPs of the compiled program (a conditional counts
its largest branch, so rows 3-4 over-count), its temporary bytes, the analytic FLOPs of
the slots actually run (forward and backward; the switch's rematerialising forward not
counted), and the speed-up of 3 over 2 and of 4 over 1. Random weights; the rows'
features are compared.

--image2d: RadFM's 2D batches (X-rays, each one depth patch; --depths only counts the used
slots) with the mask the task makes from their image mask (radjax/tasks/vlm.py
depth_mask), two rows: before session 41, every slot in one call (as the switch off
runs them; the mask only zeroes the empty slots' features); now, empty slots skipped.

--plane: the host's batch (rows 2-3) also resized in-plane to config.data.volume_image_size
as one process's training does for a batch deeper than one depth patch (volumes.py
shrink_plane); rows 1 and 4 stay whole (several processes refuse the knob); features
then differ from theirs.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax.data import pipeline, volumes  # noqa: E402
from radjax.models import factory, vlm  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config (a vit3d tower).',
                                  lock_config=True)
  flags.DEFINE_integer('slots', 10, 'Image slots per example (config.data.max_images).')
  flags.DEFINE_list('depths', ['16', '40'], 'Real depth of each used slot, in slices.')
  flags.DEFINE_list('buckets', ['16', '32'], 'config.data.depth_buckets for the switch.')
  flags.DEFINE_integer('batch', 2, 'Examples in the batch.')
  flags.DEFINE_integer('steps', 10, 'Timed calls per row after one warm-up.')
  flags.DEFINE_bool('image2d', False, "2D images (a 2D batch's slots), not volumes.")
  flags.DEFINE_bool('plane', False, 'Rows 2-3: the host batch at config.data.'
                    'volume_image_size in-plane (module doc).')


def tower_flops(v, depths, batch: int, size: int = 0) -> float:
  """Analytic forward + backward FLOPs of the tower over slots `depths` deep and `size`
  (default image_size) wide (6 x params x tokens + attention, each of `batch` rows)."""
  side = (size or v.image_size) // v.patch_size
  hd = v.head_dim or v.embed_dim // v.num_heads
  per_token = (4 * v.embed_dim * v.num_heads * hd + 2 * v.embed_dim * v.mlp_dim) * v.num_layers
  total = 0.0
  for d in depths:
    t = side * side * (d // v.depth_patch_size)
    total += 2 * per_token * t + 4 * v.num_layers * v.num_heads * hd * t * t
  return 3 * batch * total


def _time(fn, args, steps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main(argv):
  del argv
  c = FLAGS.config
  v = c.model.vision
  depth, b, m = pipeline.max_slices(c), FLAGS.batch, FLAGS.slots
  if FLAGS.image2d:
    depth = v.depth_patch_size
  real = [depth if FLAGS.image2d else int(d) for d in FLAGS.depths]
  buckets = tuple(int(x) for x in FLAGS.buckets)
  if len(real) > m or max(real) > depth:
    raise ValueError(f'--depths {real}: at most --slots={m} of them, each <= {depth}')
  cfg = factory.vlm_config(c.model, image_token_id=4)
  rt = factory.vlm_runtime(c)
  batched = vlm.VLM(cfg, dataclasses.replace(rt, volume_slot_switch=False))
  switch = vlm.VLM(cfg, dataclasses.replace(rt, depth_buckets=()))
  in_program = vlm.VLM(cfg, dataclasses.replace(rt, depth_buckets=buckets))
  counts = np.array(real + [0] * (m - len(real)))
  mask = np.broadcast_to(np.arange(depth) < counts[:, None], (b, m, depth))
  rng = np.random.default_rng(0)
  images = np.where(mask[:, :, None, None, :, None],
                    rng.random((b, m, v.image_size, v.image_size, depth, v.num_channels)),
                    0).astype(np.float32)
  trimmed = volumes.trim_depth({'images': images, 'depth_mask': mask}, buckets, depth)
  if FLAGS.plane:
    trimmed = volumes.shrink_plane(trimmed, pipeline.volume_image_size(c), v.depth_patch_size)
  host_depth, host_size = trimmed['images'].shape[-2], trimmed['images'].shape[2]
  params = jax.jit(batched.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                                 images[:1, :1], depth_mask=mask[:1, :1])
  if FLAGS.image2d:  # one slice of each, as a 2D batch holds it
    images = np.ascontiguousarray(images[..., 0, :])

  def loss(model):
    def f(p, x, dm):
      feats, _ = model.apply(p, x, dm, method=vlm.VLM._tower)
      return jnp.sum(feats.astype(jnp.float32) ** 2)
    return jax.jit(jax.value_and_grad(f))

  print(f'{b} examples x {m} slots of {v.image_size}^2 x {depth} slices (host-trimmed: '
        f'{host_size}^2 x {host_depth}); used slots {real} slices deep; buckets {buckets}; tower '
        f'{v.num_layers} layers x {v.embed_dim}')
  bucketed = [volumes.bucket(d, buckets, depth) for d in real]
  full, host = (images, mask), (trimmed['images'], trimmed['depth_mask'])
  rows = []
  programs = (
      ('before: every slot, one call', batched, full, [depth] * m),
      ('now: empty slots skipped', switch, full, [depth] * len(real)),
  ) if FLAGS.image2d else (
      ('1. several processes, before: every slot, full depth', batched, full, [depth] * m),
      ('2. one process, before: every slot, host-trimmed', batched, host, [host_depth] * m),
      ('3. one process, now: empty slots skipped, host-trimmed', switch, host,
       [host_depth] * len(real)),
      ('4. several processes, now: empty slots skipped, buckets in the program', in_program,
       full, bucketed))
  for name, model, batch, slots in programs:
    size = batch[0].shape[2]
    fn = loss(model)
    compiled = fn.lower(params, *batch).compile()
    xla = compiled.cost_analysis()
    xla = (xla[0] if isinstance(xla, list) else xla).get('flops', float('nan'))
    temp = compiled.memory_analysis().temp_size_in_bytes
    value = float(fn(params, *batch)[0])
    rows.append((name, _time(fn, (params, *batch), FLAGS.steps), xla, temp,
                 tower_flops(v, slots, b, size), value))
  print('\n| program | step (median) | XLA GFLOPs | temp MiB | analytic GFLOPs run | speed-up |')
  print('|---|---|---|---|---|---|')
  for i, (name, t, xla, temp, flops, _) in enumerate(rows):
    before = {1: 0} if FLAGS.image2d else {2: 1, 3: 0}  # now over before
    speed = f'{rows[before[i]][1] / t:.2f}x' if i in before else ''
    print(f'| {name} | {t * 1e3:.1f} ms | {xla / 1e9:.2f} | {temp / 2**20:.0f} | '
          f'{flops / 1e9:.2f} | {speed} |')
  print('\nsum of squared features: ' + ' vs '.join(f'{r[-1]:.6g}' for r in rows))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
