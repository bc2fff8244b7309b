r"""Data-pipeline throughput: radjax's Grain train pipeline against a torch DataLoader doing
the same work, and against what the train step consumes.

  python bench/data_pipeline.py --config configs/demo.py [--batches 20] [--workers 0,1,2] \
      [--image_sizes 0,224,336] [--sources demo,png512,jpeg512,jpeg_film] [--noaugment] \
      [--step_steps 3]
  python bench/data_pipeline.py --config configs/llava_tinyllama.py \
      --config.data.dir=$HOME/.cache/radjax/demo_v6 --image_sizes 0   # a GPU host
  python bench/data_pipeline.py --config configs/radvlm.py --anyres \
      --config.data.dir=$HOME/.cache/radjax/demo_v6 --config.train.batch_size=4 \
      --sources jpeg_film,png_film,jpeg_film_s1918 --workers 0 --records 16 --step_rate radvlm_hf

Per row (a source, an image size, augmentation off/on, a worker count):
  * radjax: pipeline.train_dataset + make_iterator with the task's processor (decode,
    augment, instruction template, tokenise, pad, batch), `workers` Grain read threads;
    its images as config.data.pixels sends them (8-bit and their tables, or float32:
    `--config.data.pixels=float32` for the host's lookup), whose batch bytes per example
    are the KB/ex (MB/ex) column;
  * torch: bench/torch_loader.py's Dataset over a folder of the same image files plus a
    JSON of their reports, same transforms and tokenizer, DataLoader with `workers`
    processes;
  * the step: examples/s of the jitted train step at the row's shapes on this host's
    devices (bench/train_step.py's timing, synthetic batch), once per image size.
Examples/s per core counts the workers as cores (at least 1); the CPU time per example
(getrusage of this process plus /proc of the DataLoader's worker processes, over the
timed batches) is the honest per-core cost on a shared machine.

Sources: `demo` reads the config's dataset as built (the demo's 224 px grayscale PNGs);
`png512` / `jpeg512` re-encode its first --records images at 512 x 512 into a flat
ArrayRecord dataset and the torch folder (upscaled; a real decode cost per image);
`jpeg_film` at 2,544 x 3,056, the size of a MIMIC-CXR-JPG film (what XrayGPT, LLM-CXR and
RadVLM train on), `png_film` the same as 8-bit PNGs. `jpeg_film_s512`: the same films,
which torch reads as they are (as the seeds do) and radjax as `python -m data_prep build
... --max_short_side 512` stores them; `jpeg_film_s1918` the same at 1918 x 2304, the size
RadVLM's AnyRes resizes such a film to (its 6 x 5 tile grid).

--anyres: RadVLM's image path, LLaVA-OneVision's AnyRes. radjax's rows tile each image
(config.model.anyres_grids every (rows, cols) up to 6 x 6 tiles of the tower's size,
anyres_max_tiles 9, unless the config sets its own; max_len grows by the placeholders an
image can gain); the torch side reads each image with transformers'
LlavaOnevisionImageProcessorPil (what RadVLM's HF eval path and LLaVA-NeXT's
process_anyres_image do) and counts its placeholders as LlavaOnevisionProcessor does.
No augmentation (LLaVA-NeXT has none). The step: --step_rate (examples/s per device):
a number, or `radvlm_hf`, RadVLM's own run (radvlm_hf_examples_per_s).
"""
import functools
import io
import multiprocessing
import os
import resource
import sys
import tempfile
import time

import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # the DataLoader forks

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402

from bench import torch_loader, train_step  # noqa: E402
from data_prep import build, downscale  # noqa: E402
from radjax import run  # noqa: E402
from radjax.core import host_memory  # noqa: E402
from radjax.data import anyres, chat, images, instructions, pipeline, schema, source, tokens  # noqa: E402
from radjax.models import factory  # noqa: E402

FLAGS = flags.FLAGS
# name -> (format, (width, height)) of the re-encoded images [, radjax's build-time
# max_short_side]; 'demo' reads the dataset as is
SOURCES = {'demo': None, 'png512': ('png', (512, 512)), 'jpeg512': ('jpeg', (512, 512)),
           'jpeg_film': ('jpeg', (2544, 3056)), 'jpeg_film_s512': ('jpeg', (2544, 3056), 512),
           'png_film': ('png', (2544, 3056)),
           'jpeg_film_s1918': ('jpeg', (2544, 3056), 1918)}
# RadVLM's AnyRes (finetune_radio_7b.sh): --image_grid_pinpoints "(1x1),...,(6x6)",
# --image_aspect_ratio anyres_max_9.
RADVLM_GRIDS = tuple((r, c) for r in range(1, 7) for c in range(1, 7))
RADVLM_MAX_TILES = 9
# RadVLM's run (seeds_spec.md section 3.2): one epoch of 4355 steps of 256 examples on 32
# nodes x 4 GPUs (GH200), under one job's 12 h wall limit.
RADVLM_HF_RUN = dict(steps=4355, batch=256, gpus=32 * 4, hours=12)


def define_flags():
  """This script's flags (not at import: the tests import the module)."""
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_integer('batches', 20, 'Timed batches per row (after the warm-up ones).')
  flags.DEFINE_list('workers', ['0', '1', '2'], 'Grain threads / DataLoader processes.')
  flags.DEFINE_enum('radjax_workers', 'threads', ['threads', 'processes'],
                    "radjax's workers: read threads (config.data.worker_threads) or worker "
                    'processes (config.data.worker_processes, each reading in its thread).')
  flags.DEFINE_bool('augment', True, 'Rows with config.data.augment=True as well as off.')
  flags.DEFINE_list('image_sizes', ['0', '224', '336'],
                    "config.model.vision.image_size of the rows (0: the config's).")
  flags.DEFINE_list('sources', ['demo', 'png512', 'jpeg512'],
                    f'Images read: {", ".join(SOURCES)}.')
  flags.DEFINE_integer('records', 256, 'Records in the re-encoded sources and the torch '
                       'folders.')
  flags.DEFINE_integer('step_steps', 3, 'Timed train steps per image size; 0 leaves the '
                       'step column empty (fill it on the accelerator host).')
  flags.DEFINE_string('tmp', '', 'Folder for the written datasets (default: a temp dir).')
  flags.DEFINE_float('step_mfu', 0, 'Instead of timing the step here: the examples/s of a '
                     'step at this MFU of --peak_tflops (analytic FLOPs), e.g. 0.55 and 989 '
                     "for issue 15's H100/H200 target.")
  flags.DEFINE_float('peak_tflops', 989, "The accelerator's peak TFLOP/s for --step_mfu.")
  flags.DEFINE_enum('host_allocator', '', ['', *host_memory.ALLOCATORS],
                    "The process's malloc (config.runtime.host_allocator's choices; main.py's "
                    "default is mimalloc); '' keeps the one it started with (glibc).")
  flags.DEFINE_bool('anyres', False, "Rows of RadVLM's AnyRes image path (module doc).")
  flags.DEFINE_string('step_rate', '', 'Instead of timing the step: the examples/s one '
                      "device consumes, a number or radvlm_hf (RadVLM's run: "
                      'radvlm_hf_examples_per_s). The only step column of --anyres rows.')


# ---- configs and sources -------------------------------------------------------------


def image_tokens(config) -> int:
  """Placeholders per image of the config's VLM."""
  return factory.vlm_config(config.model, 0).tokens_per_image


def variant(config, *, image_size: int = 0, augment: bool | None = None, data_dir: str = '',
            tokenizer: str = ''):
  """A copy of config with the row's image size, augmentation and dataset. A new image
  size changes the placeholders per image; max_len changes by as many, so the text keeps
  its room (the demo's 64 px -> 224 px: 16 -> 196 placeholders, max_len 128 -> 308)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    if image_size and image_size != c.model.vision.image_size:
      before = image_tokens(c)
      c.model.vision.image_size = image_size
      c.data.max_len += c.data.max_images * (image_tokens(c) - before)
    if augment is not None:
      c.data.augment = augment
    if data_dir:  # one source read alone (a recipe's mixture dropped)
      c.data.dir, c.data.builder, c.data.tokenizer = data_dir, '', tokenizer
      c.data.mixture = ml_collections.ConfigDict()
  return c


def with_anyres(config):
  """A copy of config with RadVLM's AnyRes (RADVLM_GRIDS, RADVLM_MAX_TILES) unless it sets
  its own grids; max_len grows by the placeholders an image can gain over one tile's (the
  plan's length less the tile's), so the text keeps its room (RadVLM: 4096 -> 12196)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    before = image_tokens(c)
    if not c.model.anyres_grids:
      c.model.anyres_grids, c.model.anyres_max_tiles = RADVLM_GRIDS, RADVLM_MAX_TILES
    c.data.max_len += c.data.max_images * (anyres_spec(c).max_tokens - before)
  return c


def anyres_spec(config) -> anyres.AnyRes:
  """The config's AnyRes, as radjax.tasks.vlm makes it."""
  v = config.model.vision
  return anyres.AnyRes(tile=v.image_size, side=v.image_size // v.patch_size,
                       grids=tuple(tuple(g) for g in config.model.anyres_grids),
                       max_tiles=config.model.anyres_max_tiles)


def anyres_image(config) -> dict:
  """What AnyRes makes of config.data.dir's first train image: its size as stored, tiles
  (base + grid) and placeholders."""
  ex = read_examples(config, 1)[0]
  pil = images.decode_image(ex['images'][0], 3, ex['id'], keep_gray=True)
  spec = anyres_spec(config)
  w, h = pil.size
  rows, cols = anyres.best_grid(h, w, spec)
  return {'size': (w, h), 'grid': (rows, cols), 'tiles': 1 + rows * cols,
          'tokens': anyres.plan(h, w, spec)[2]}


def ensure_built(config) -> None:
  """config.data.dir built with data_prep.<config.data.builder> when missing (as
  main.py does before training)."""
  if config.data.builder and not os.path.exists(os.path.join(config.data.dir,
                                                             'manifest.json')):
    build.ensure_built(config.data.builder, config.data.dir,
                       **config.data.builder_kwargs.to_dict())


def read_examples(config, n: int) -> list[dict]:
  """The first n train records of config.data.dir, decoded."""
  records = source.open_split(config.data.dir, config.data.train_split)
  return [schema.decode(records[i]) for i in range(min(n, len(records)))]


def reencoded(examples: list[dict], fmt: str, size=(512, 512)) -> list[dict]:
  """The examples with their first image resized to size (width, height) and saved as
  fmt ('png' | 'jpeg', quality 95)."""
  out = []
  for ex in examples:
    image = ex['images'][0]
    img = Image.open(io.BytesIO(image['data']))
    buf = io.BytesIO()
    img.resize(tuple(size), Image.BICUBIC).save(buf, format=fmt.upper(), quality=95)
    out.append({**ex, 'images': [{**image, 'data': buf.getvalue(), 'format': fmt}]
                + ex['images'][1:]})
  return out


def write_dataset(examples: list[dict], out_dir: str, split: str) -> str:
  """A flat ArrayRecord dataset of the examples (data_prep's writer); returns out_dir."""
  from data_prep import writer
  writer.build_dataset(out_dir, {split: examples})
  return out_dir


# ---- the two pipelines ---------------------------------------------------------------


def radjax_iterator(config, workers: int, processes: bool = False):
  """The train pipeline's iterator with `workers` read threads, or worker processes
  (process 0 of 1)."""
  task = run.make_task(config)
  ds = pipeline.train_dataset(config, task.processor, config.data.train_split, 0, 1)
  if processes:
    return pipeline.make_iterator(ds, 0, worker_processes=workers)
  return pipeline.make_iterator(ds, workers)


def torch_dataset(config, folder: str, *, length: int = 0, prompts=None):
  """bench/torch_loader.ReportFolder with the config's sizes, its tokenizer (loaded and
  given the chat format's tokens as radjax's tasks do) and its chat template."""
  c = config.data
  tokenizer = tokens.load_tokenizer(tokens.tokenizer_path(config))
  fmt = chat.get_format(c.chat_format)
  chat.prepare_tokenizer(tokenizer, fmt, True, c.get('image_delimiters', False))
  options = instructions.options_from_config(c.task_options)
  if tuple(c.tasks) != ('report',):
    raise ValueError(f'config.data.tasks={tuple(c.tasks)}: the torch baseline writes '
                     "reports only (tasks ('report',))")
  section = options.report_section
  prompts = prompts or {'both': instructions.REPORT_INSTRUCTIONS,
                        'findings': instructions.FINDINGS_INSTRUCTIONS,
                        'impression': instructions.IMPRESSION_INSTRUCTIONS}[section]
  common = dict(max_len=c.max_len, mean=tuple(c.image_mean), std=tuple(c.image_std),
                prompts=tuple(prompts), max_images=c.max_images, augment=c.augment,
                crop_scale=tuple(c.crop_scale), label_names=tuple(c.get('label_names', ())),
                uncertain_as=options.uncertain_as, length=length, section=section)
  template = chat.chat_template(fmt, c.system_prompt)
  if config.model.get('anyres_grids', ()):  # (no label head: radjax refuses one)
    spec = anyres_spec(config)
    return torch_loader.AnyResFolder(folder, tokenizer, template, tile=spec.tile,
                                     side=spec.side, grids=spec.grids,
                                     max_tiles=spec.max_tiles, **{**common, 'label_names': ()})
  task = run.make_task(config)  # the placeholders per image of the config's model
  return torch_loader.ReportFolder(
      folder, tokenizer, template, image_size=config.model.vision.image_size,
      image_tokens=task.model_cfg.tokens_per_image, **common)


def _proc_cpu_seconds(pid: int) -> float:
  """utime + stime of a live process (Linux /proc; children's getrusage counts only
  reaped ones)."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _worker_pids(it) -> list[int]:
  return [w.pid for w in getattr(it, '_workers', [])]


def _self_cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def timed(it, batches: int, warmup: int, worker_pids=list) -> dict:
  """Examples/s and CPU seconds per example over `batches` batches after `warmup` ones.
  The warm-up lets every worker reach its steady state (they start in step)."""
  for _ in range(warmup):
    batch = next(it)
  pids = list(worker_pids())

  def cpu():
    return _self_cpu_seconds() + sum(_proc_cpu_seconds(p) for p in pids)

  c0, s0, t0, examples = cpu(), _self_cpu_seconds(), time.perf_counter(), 0
  for _ in range(batches):
    batch = next(it)
    examples += len(batch['tokens'])
  dt, dc, ds = time.perf_counter() - t0, cpu() - c0, _self_cpu_seconds() - s0
  return {'examples': examples, 'examples_per_s': examples / dt,
          'cpu_s_per_example': dc / examples,
          'self_cpu_s_per_example': ds / examples,
          # what a batch holds per example (radjax's arrays: config.data.pixels' images)
          'bytes_per_example': sum(v.nbytes for v in batch.values()
                                   if isinstance(v, np.ndarray)) / len(batch['tokens']),
          'shapes': {k: tuple(v.shape) for k, v in batch.items() if hasattr(v, 'shape')}}


def warmup_batches(workers: int) -> int:
  return max(2, 2 * workers)


def measure_radjax(config, workers: int, batches: int, processes: bool = False) -> dict:
  it = radjax_iterator(config, workers, processes)
  try:
    pids = (lambda: [p.pid for p in multiprocessing.active_children()]) if processes else list
    return timed(it, batches, warmup_batches(workers), pids)
  finally:
    if hasattr(it, 'close'):
      it.close()


def measure_torch(config, folder: str, workers: int, batches: int) -> dict:
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # workers=0: one core, as the DataLoader's workers get
  try:
    b = config.train.batch_size
    need = (warmup_batches(workers) + batches + 4 * max(workers, 1)) * b  # + prefetch
    loader = torch_loader.loader(torch_dataset(config, folder, length=need), b, workers)
    it = iter(loader)
    out = timed(it, batches, warmup_batches(workers), functools.partial(_worker_pids, it))
    del it  # its workers stop
    return out
  finally:
    torch.set_num_threads(threads)


def radvlm_hf_examples_per_s() -> float:
  """Examples/s per GPU of RadVLM's run, if its epoch took the whole of one 12 h job
  (RADVLM_HF_RUN: 4355 x 256 / (128 x 43,200 s) = 0.20): its published figures give no
  step time, so this is the rate a host had to feed."""
  r = RADVLM_HF_RUN
  return r['steps'] * r['batch'] / (r['gpus'] * r['hours'] * 3600)


def stated_step_rate(value: str) -> float:
  """--step_rate: a number, or 'radvlm_hf'."""
  if value == 'radvlm_hf':
    return radvlm_hf_examples_per_s()
  try:
    return float(value)
  except ValueError:
    raise ValueError(f"--step_rate={value!r}: examples/s per device, or 'radvlm_hf'") from None


def step_examples_per_s(config, steps: int) -> float:
  """Examples/s the jitted train step consumes at the config's shapes."""
  seconds, _, _ = train_step.time_step(variant(config), steps)
  return config.train.batch_size / seconds


def step_examples_per_s_at(config, mfu: float, peak_tflops: float) -> float:
  """Examples/s a train step at `mfu` of `peak_tflops` per device consumes at the config's
  shapes, on one device: from the analytic FLOPs of the abstract model (nothing
  allocated), so a CPU host can size the pipeline for an accelerator's step."""
  from bench import memory
  c = variant(config)
  with c.unlocked():
    c.runtime.attention_impl = 'xla'  # the same shapes and FLOPs; any host builds it
  exp = memory.experiment(c, 1)
  flops = train_step.analytic_flops(exp.config, exp.state.params, exp.labels)['total']
  return config.train.batch_size * mfu * peak_tflops * 1e12 / flops


# ---- the table -----------------------------------------------------------------------


def _fmt(x, spec='{:,.0f}'):
  return '—' if x is None else spec.format(x)


def table(rows: list[dict]) -> str:
  head = ('| source | px | max_len | augment | workers | radjax ex/s | radjax ex/s/core | '
          'radjax CPU ms/ex | radjax KB/ex | torch ex/s | torch ex/s/core | torch CPU ms/ex | '
          'radjax/torch ex/s | torch/radjax CPU | step ex/s | radjax/step |')
  lines = [head, '|' + '---|' * head.count(' | ') + '---|']
  for r in rows:
    cores = max(1, r['workers'])
    ra, to = r['radjax'], r['torch']
    lines.append('| ' + ' | '.join([
        r['source'], str(r['px']), str(r['max_len']), 'on' if r['augment'] else 'off',
        f"{r['workers']}{' proc' if r.get('processes') else ''}",
        _fmt(ra['examples_per_s']), _fmt(ra['examples_per_s'] / cores),
        _fmt(1e3 * ra['cpu_s_per_example'], '{:.2f}'),
        _fmt(ra['bytes_per_example'] / 1e3, '{:,.1f}'),
        _fmt(to['examples_per_s']), _fmt(to['examples_per_s'] / cores),
        _fmt(1e3 * to['cpu_s_per_example'], '{:.2f}'),
        _fmt(ra['examples_per_s'] / to['examples_per_s'], '{:.2f}×'),
        _fmt(to['cpu_s_per_example'] / ra['cpu_s_per_example'], '{:.2f}×'),
        _fmt(r['step']), _fmt(None if r['step'] is None else ra['examples_per_s'] / r['step'],
                              '{:.1f}×')]) + ' |')
  return '\n'.join(lines)


def anyres_table(rows: list[dict]) -> str:
  """--anyres rows: besides the rates, each source's image as radjax reads it (size, tiles
  of the 1 + 36 slots, placeholders), and the cores that feed one device's step at
  --step_rate: step ex/s x CPU seconds per example."""
  head = ('| source | image (w x h) | tiles | tokens | workers | radjax ex/s | radjax ex/s/core | '
          'radjax CPU ms/ex | radjax MB/ex | torch ex/s | torch ex/s/core | torch CPU ms/ex | '
          'radjax/torch ex/s | torch/radjax CPU | step ex/s/device | radjax/step | '
          'radjax cores/device | torch cores/device |')
  lines = [head, '|' + '---|' * head.count(' | ') + '---|']
  for r in rows:
    cores = max(1, r['workers'])
    ra, to, step, im = r['radjax'], r['torch'], r['step'], r['image']
    lines.append('| ' + ' | '.join([
        r['source'], '{} x {}'.format(*im['size']), str(im['tiles']), f"{im['tokens']:,}",
        f"{r['workers']}{' proc' if r.get('processes') else ''}",
        _fmt(ra['examples_per_s'], '{:,.1f}'), _fmt(ra['examples_per_s'] / cores, '{:,.1f}'),
        _fmt(1e3 * ra['cpu_s_per_example'], '{:.1f}'),
        _fmt(ra['bytes_per_example'] / 1e6, '{:,.2f}'),
        _fmt(to['examples_per_s'], '{:,.2f}'), _fmt(to['examples_per_s'] / cores, '{:,.2f}'),
        _fmt(1e3 * to['cpu_s_per_example'], '{:.1f}'),
        _fmt(ra['examples_per_s'] / to['examples_per_s'], '{:.2f}×'),
        _fmt(to['cpu_s_per_example'] / ra['cpu_s_per_example'], '{:.2f}×'),
        _fmt(step, '{:.3f}'),
        _fmt(None if step is None else ra['examples_per_s'] / cores / step, '{:.1f}×'),
        _fmt(None if step is None else step * ra['cpu_s_per_example'], '{:.3f}'),
        _fmt(None if step is None else step * to['cpu_s_per_example'], '{:.3f}')]) + ' |')
  return '\n'.join(lines)


def prepare_sources(config, names, records: int, tmp: str) -> dict:
  """name -> (radjax data dir, torch folder): the demo as built, or its first `records`
  examples re-encoded as SOURCES says."""
  examples = read_examples(config, records)
  out = {}
  for name in names:
    if name not in SOURCES:
      raise ValueError(f'--sources: {name!r} is not one of {tuple(SOURCES)}')
    if name == 'demo':
      out[name] = (config.data.dir,
                   torch_loader.write_folder(examples, os.path.join(tmp, 'torch_demo')))
      continue
    fmt, size, *short_side = SOURCES[name]
    again = reencoded(examples, fmt, size)
    stored = [downscale.downscale_example(ex, short_side[0]) for ex in again] if short_side \
      else again
    out[name] = (write_dataset(stored, os.path.join(tmp, f'radjax_{name}'),
                               config.data.train_split),
                 torch_loader.write_folder(again, os.path.join(tmp, f'torch_{name}')))
  return out


def main(argv):
  del argv
  if FLAGS.host_allocator:
    host_memory.restart_with(FLAGS.host_allocator)
  config = with_anyres(FLAGS.config) if FLAGS.anyres else FLAGS.config
  ensure_built(config)
  tokenizer = tokens.tokenizer_path(config)
  workers = [int(w) for w in FLAGS.workers]
  sizes = [int(s) or config.model.vision.image_size for s in FLAGS.image_sizes]
  augments = (False, True) if FLAGS.augment else (False,)
  if FLAGS.anyres:  # the tile is the tower's size; LLaVA-NeXT neither crops nor jitters
    sizes, augments = [config.model.vision.image_size], (False,)
  load0 = os.getloadavg()
  tmp = FLAGS.tmp or tempfile.mkdtemp(prefix='radjax_data_bench_')
  sources = prepare_sources(config, FLAGS.sources, FLAGS.records, tmp)
  rows = []
  for name, (data_dir, folder) in sources.items():
    for px in sizes:
      for augment in augments:
        for w in workers:
          c = variant(config, image_size=px, augment=augment,
                      data_dir='' if name == 'demo' else data_dir, tokenizer=tokenizer)
          ra = measure_radjax(c, w, FLAGS.batches, FLAGS.radjax_workers == 'processes')
          to = measure_torch(c, folder, w, FLAGS.batches)
          rows.append({'source': name, 'px': px, 'max_len': c.data.max_len, 'augment': augment,
                       'workers': w, 'radjax': ra, 'torch': to, 'step': None,
                       'processes': FLAGS.radjax_workers == 'processes',
                       'image': anyres_image(c) if FLAGS.anyres else None})
          print(f'{name} {px}px augment={augment} workers={w}: radjax '
                f"{ra['examples_per_s']:.0f} ex/s ({1e3 * ra['self_cpu_s_per_example']:.2f} "
                f"ms/ex of CPU in this process, {ra['bytes_per_example'] / 1e3:,.1f} KB/ex), "
                f"torch {to['examples_per_s']:.0f} ex/s "
                f"({1e3 * to['self_cpu_s_per_example']:.2f})", file=sys.stderr, flush=True)
  # The step after the pipelines: no JAX threads while the DataLoader forks.
  if FLAGS.step_rate:
    steps = {px: stated_step_rate(FLAGS.step_rate) for px in sizes}
  elif FLAGS.anyres:  # neither the CPU step nor the analytic FLOPs count the grid's tiles
    steps = {}
  elif FLAGS.step_mfu:
    steps = {px: step_examples_per_s_at(variant(config, image_size=px), FLAGS.step_mfu,
                                        FLAGS.peak_tflops) for px in sizes}
  elif FLAGS.step_steps:
    steps = {px: step_examples_per_s(variant(config, image_size=px), FLAGS.step_steps)
             for px in sizes}
  else:
    steps = {}
  for r in rows:
    r['step'] = steps.get(r['px'])
  import jax
  c = config
  print(f'config: batch {c.train.batch_size} x {c.data.max_len} tokens, '
        f'{c.data.max_images} image(s) per example; {FLAGS.batches} timed batches per row; '
        f'host: {os.cpu_count()} CPUs, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}, '
        f'host allocator {host_memory.in_effect()}'
        + ('' if FLAGS.step_mfu or FLAGS.step_rate or not steps else
           f'; step on {jax.device_count()} x {jax.devices()[0].device_kind}'))
  print(anyres_table(rows) if FLAGS.anyres else table(rows))
  if FLAGS.step_rate:
    print(f'step ex/s: stated (--step_rate={FLAGS.step_rate}), not measured here'
          + (f'; RadVLM: {RADVLM_HF_RUN}' if FLAGS.step_rate == 'radvlm_hf' else ''))
  elif FLAGS.step_mfu:
    print(f'step ex/s: a step at {100 * FLAGS.step_mfu:.0f} % MFU of {FLAGS.peak_tflops:g} '
          'TFLOP/s (analytic FLOPs), not measured here')
  elif not steps:
    print('step ex/s = config.train.batch_size / step seconds (bench/train_step.py on the '
          'accelerator host)')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
