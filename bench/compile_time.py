r"""Compile time of a recipe's train step against decoder depth, layers scanned or not.

  python bench/compile_time.py --config configs/llava_tinyllama.py [--layers 4,32]
      [--scan both|on|off] [--config.data.max_len=512 --config.train.batch_size=1 ...]

The step is lowered and compiled from abstract shapes (nothing of the model allocated),
timing `.lower()` and `.compile()` apart, on one device. With `nn.scan` over layers a
32-layer step should compile about as fast as a 4-layer one (target <= 1.3x); unrolled,
compile time grows with depth. On a CPU, cuDNN attention becomes xla (printed).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import compiled_step  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_string('layers', '4,32', 'Decoder depths to compile.')
  flags.DEFINE_enum('scan', 'both', ['both', 'on', 'off'], 'config.runtime.scan_layers.')


def compile_row(config, layers: int, scan: bool, compile: bool = True) -> dict:
  """Lower and compile seconds of the train step with `layers` decoder layers (one compile:
  a repeat in the same process may hit JAX's cache, so run the script twice instead)."""
  # 'scan on' is nn.scan's loop: runtime.unroll_scan (on in CPU-sized configs) would
  # apply the stacked layers one by one, which compiles like unrolled ones.
  config = compiled_step.with_overrides(
      config, {'model.llm.num_layers': layers, 'runtime.scan_layers': scan,
               'runtime.unroll_scan': False})
  r = compiled_step.lower_and_compile(config, compile=compile)
  del r['compiled']
  return dict(layers=layers, scan=scan, **r)


def table(rows) -> str:
  base = {r['scan']: r for r in rows if r['layers'] == min(x['layers'] for x in rows)}
  out = ['| decoder layers | scan | params | lower | compile | lower + compile | vs fewest '
         'layers | StableHLO lines |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    total = r['lower_s'] + r['compile_s']
    b = base[r['scan']]
    out.append(f'| {r["layers"]} | {"on" if r["scan"] else "off"} | {r["params"] / 1e6:.0f}M | '
               f'{r["lower_s"]:.1f} s | {r["compile_s"]:.1f} s | {total:.1f} s | '
               f'{total / (b["lower_s"] + b["compile_s"]):.2f}x | {r["hlo_lines"]:,} |')
  return '\n'.join(out)


def main(argv):
  del argv
  config = c = compiled_step.prepare(FLAGS.config)
  print(f'model: vision {c.model.vision.kind} {c.model.vision.num_layers}L '
        f'{c.model.vision.image_size}px, llm {c.model.llm.embed_dim} wide; batch '
        f'{c.train.batch_size} x {c.data.max_len} tokens; dtype {c.runtime.dtype}, remat '
        f'{c.runtime.remat.llm}')
  scans = {'both': (True, False), 'on': (True,), 'off': (False,)}[FLAGS.scan]
  rows = []
  for scan in scans:
    for layers in (int(x) for x in FLAGS.layers.split(',')):
      rows.append(compile_row(config, layers, scan))
      r = rows[-1]
      print(f'  {layers} layers, scan {scan}: lower {r["lower_s"]:.1f} s, compile '
            f'{r["compile_s"]:.1f} s', flush=True)
  print()
  print(table(rows))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
