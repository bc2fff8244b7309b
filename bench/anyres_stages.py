r"""Where a film's AnyRes read goes: CPU time per stage of radjax's TileSlots (RadVLM's
image path) on one film, beside transformers' LlavaOnevisionImageProcessorPil on the same
file.

  python bench/anyres_stages.py --config configs/radvlm.py \
      --config.data.dir=$HOME/.cache/radjax/demo_v6 [--sources jpeg_film,png_film] [--repeats 5] \
      [--host_allocator mimalloc]

The film is the dataset's first image re-encoded as bench/data_pipeline.py's sources are
(2,544 x 3,056 grayscale; `jpeg_film_s1918` as a `--max_short_side 1918` build stores it).
AnyRes as `bench/data_pipeline.py --anyres` sets it (RadVLM's 6 x 6 grids, anyres_max_9,
unless the config has its own). Each stage is timed alone, as TileSlots calls it (median
of --repeats, `time.process_time`); two rows are the rest of a whole call:
  * 'tile cut, copies' = anyres.tiles - (grid resize + pad + base resize): cutting the
    8-bit canvas into tiles (the normalising lookup runs on the device since 010b5fd);
  * "TileSlots' own" = TileSlots - (decode + anyres.tiles + plan): its buffers.
"""
import io
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402

from bench import data_pipeline, torch_loader  # noqa: E402
from data_prep import downscale  # noqa: E402
from radjax import run  # noqa: E402
from radjax.core import host_memory  # noqa: E402
from radjax.data import anyres  # noqa: E402
from radjax.data import images as images_lib  # noqa: E402

FLAGS = flags.FLAGS
STAGES = ('decode (PIL, + constant check)', 'grid resize (PIL bicubic)', 'pad (PIL paste)',
          'base resize (PIL bicubic)', 'tile cut, copies', 'plan', "TileSlots' own",
          'TileSlots, whole call', 'HF: open + convert RGB', 'HF: LlavaOnevisionImageProcessorPil',
          'HF, whole')


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('sources', ['jpeg_film', 'png_film', 'jpeg_film_s1918'],
                    'bench/data_pipeline.py sources, one film each.')
  flags.DEFINE_integer('repeats', 5, 'Timings per stage (the median is reported).')
  flags.DEFINE_enum('host_allocator', '', ['', *host_memory.ALLOCATORS],
                    "The process's malloc ('' keeps the one it started with).")


def film(config, name: str) -> dict:
  """The dataset's first example with its image as source `name` stores it."""
  fmt, size, *short_side = data_pipeline.SOURCES[name]
  ex = data_pipeline.reencoded(data_pipeline.read_examples(config, 1), fmt, size)[0]
  return downscale.downscale_example(ex, short_side[0]) if short_side else ex


def cpu_ms(fn, repeats: int) -> float:
  fn()  # warm
  times = []
  for _ in range(repeats):
    t0 = time.process_time()
    fn()
    times.append(time.process_time() - t0)
  return 1e3 * statistics.median(times)


def stages(config, example: dict, repeats: int) -> dict:
  """Stage -> CPU ms for one example's one image."""
  slots = run.make_task(config).slots['image']
  spec, image = slots.spec, example['images'][0]
  pil = images_lib.decode_image(image, slots.num_channels, example['id'], keep_gray=True)
  w0, h0 = pil.size
  rows, cols = anyres.best_grid(h0, w0, spec)
  gh, gw = rows * spec.tile, cols * spec.tile
  nh, nw = anyres.fitted_size(h0, w0, gh, gw)
  resized = pil.resize((nw, nh), Image.BICUBIC)

  def pad():
    Image.new(pil.mode, (gw, gh), 0).paste(resized, ((gw - nw) // 2, (gh - nh) // 2))

  ip, _ = torch_loader.hf_anyres(spec.tile, spec.side, spec.grids, spec.max_tiles, slots.mean,
                                 slots.std)
  rgb = Image.open(io.BytesIO(image['data'])).convert('RGB')
  t = {
      STAGES[0]: cpu_ms(lambda: images_lib.decode_image(image, slots.num_channels, 'x',
                                                        keep_gray=True), repeats),
      STAGES[1]: cpu_ms(lambda: pil.resize((nw, nh), Image.BICUBIC), repeats),
      STAGES[2]: cpu_ms(pad, repeats),
      STAGES[3]: cpu_ms(lambda: pil.resize((spec.tile, spec.tile), Image.BICUBIC), repeats),
      'tiles': cpu_ms(lambda: anyres.tiles(pil, spec), repeats),
      STAGES[5]: cpu_ms(lambda: anyres.plan(h0, w0, spec), repeats),
      STAGES[7]: cpu_ms(lambda: slots(example, None), repeats),
      STAGES[8]: cpu_ms(lambda: Image.open(io.BytesIO(image['data'])).convert('RGB'), repeats),
      STAGES[9]: cpu_ms(lambda: ip(rgb, return_tensors='pt'), repeats),
  }
  t[STAGES[4]] = t['tiles'] - t[STAGES[1]] - t[STAGES[2]] - t[STAGES[3]]
  t[STAGES[6]] = t[STAGES[7]] - t[STAGES[0]] - t.pop('tiles') - t[STAGES[5]]
  t[STAGES[10]] = t[STAGES[8]] + t[STAGES[9]]
  t['film'] = f'{w0} x {h0}, grid {rows} x {cols}'
  return t


def table(results: dict) -> str:
  names = list(results)
  head = '| stage | ' + ' | '.join(f'{n} CPU ms ({results[n]["film"]})' for n in names) + ' |'
  lines = [head, '|' + '---|' * (len(names) + 1)]
  for stage in STAGES:
    cells = []
    for n in names:
      r = results[n]
      share = 100 * r[stage] / r[STAGES[7]]
      cells.append(f'{r[stage]:.1f}' + ('' if stage.startswith(('HF', 'TileSlots,'))
                                        else f' ({share:.0f} %)'))
    lines.append(f'| {stage} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if FLAGS.host_allocator:
    host_memory.restart_with(FLAGS.host_allocator)
  config = data_pipeline.with_anyres(FLAGS.config)
  data_pipeline.ensure_built(config)
  load0 = os.getloadavg()
  results = {name: stages(config, film(config, name), FLAGS.repeats) for name in FLAGS.sources}
  print(f'median of {FLAGS.repeats}; host: {os.cpu_count()} CPUs, load average '
        f'{load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, host allocator {host_memory.in_effect()}')
  print(table(results))


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
