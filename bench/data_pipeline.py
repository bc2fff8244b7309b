r"""Data-pipeline throughput: radjax's Grain train pipeline against a torch DataLoader doing
the same work, and against what the train step consumes.

  python bench/data_pipeline.py --config configs/demo.py [--batches 20] [--workers 0,1,2] \
      [--image_sizes 0,224,336] [--sources demo,png512,jpeg512,jpeg_film] [--noaugment] \
      [--step_steps 3]
  python bench/data_pipeline.py --config configs/llava_tinyllama.py \
      --config.data.dir=$HOME/.cache/radjax/demo_v5 --image_sizes 0   # a GPU host

Per row (a source, an image size, augmentation off/on, a worker count):
  * radjax: pipeline.train_dataset + make_iterator with the task's processor (decode,
    augment, instruction template, tokenise, pad, batch), `workers` Grain read threads;
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
RadVLM train on). `jpeg_film_s512`: the same films, which torch reads as they are (as the
seeds do) and radjax as `python -m data_prep build ... --max_short_side 512` stores them.
"""
import functools
import importlib
import io
import multiprocessing
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')  # the DataLoader forks

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402

from bench import torch_loader, train_step  # noqa: E402
from data_prep import downscale  # noqa: E402
from radjax import run  # noqa: E402
from radjax.data import chat, instructions, pipeline, schema, source, tokens  # noqa: E402
from radjax.models import factory  # noqa: E402

FLAGS = flags.FLAGS
# name -> (format, (width, height)) of the re-encoded images [, radjax's build-time
# max_short_side]; 'demo' reads the dataset as is
SOURCES = {'demo': None, 'png512': ('png', (512, 512)), 'jpeg512': ('jpeg', (512, 512)),
           'jpeg_film': ('jpeg', (2544, 3056)), 'jpeg_film_s512': ('jpeg', (2544, 3056), 512)}


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
    if data_dir:
      c.data.dir, c.data.builder, c.data.tokenizer = data_dir, '', tokenizer
  return c


def ensure_built(config) -> None:
  """config.data.dir built with data_prep.<config.data.builder> when missing (as
  main.py does before training)."""
  if config.data.builder and not os.path.exists(os.path.join(config.data.dir,
                                                             'manifest.json')):
    builder = importlib.import_module(f'data_prep.{config.data.builder}')
    builder.ensure_built(config.data.dir, **config.data.builder_kwargs.to_dict())


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
  if tuple(c.tasks) != ('report',) or options.report_section != 'both':
    raise ValueError(f'config.data.tasks={tuple(c.tasks)} / task_options.report_section='
                     f"{options.report_section!r}: the torch baseline writes reports only "
                     "(tasks ('report',), section 'both')")
  prompts = prompts or instructions.REPORT_INSTRUCTIONS
  task = run.make_task(config)  # the placeholders per image of the config's model
  return torch_loader.ReportFolder(
      folder, tokenizer, chat.chat_template(fmt, c.system_prompt),
      image_size=config.model.vision.image_size, mean=tuple(c.image_mean),
      std=tuple(c.image_std), max_len=c.max_len, image_tokens=task.model_cfg.tokens_per_image,
      prompts=tuple(prompts), max_images=c.max_images, augment=c.augment,
      crop_scale=tuple(c.crop_scale), label_names=tuple(c.get('label_names', ())),
      uncertain_as=options.uncertain_as, length=length)


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
  return {'examples_per_s': examples / dt, 'cpu_s_per_example': dc / examples,
          'self_cpu_s_per_example': ds / examples,
          'shapes': {k: tuple(v.shape) for k, v in batch.items()}}


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
          'radjax CPU ms/ex | torch ex/s | torch ex/s/core | torch CPU ms/ex | radjax/torch ex/s | '
          'torch/radjax CPU | step ex/s | radjax/step |')
  lines = [head, '|' + '---|' * head.count(' | ') + '---|']
  for r in rows:
    cores = max(1, r['workers'])
    ra, to = r['radjax'], r['torch']
    lines.append('| ' + ' | '.join([
        r['source'], str(r['px']), str(r['max_len']), 'on' if r['augment'] else 'off',
        f"{r['workers']}{' proc' if r.get('processes') else ''}",
        _fmt(ra['examples_per_s']), _fmt(ra['examples_per_s'] / cores),
        _fmt(1e3 * ra['cpu_s_per_example'], '{:.2f}'),
        _fmt(to['examples_per_s']), _fmt(to['examples_per_s'] / cores),
        _fmt(1e3 * to['cpu_s_per_example'], '{:.2f}'),
        _fmt(ra['examples_per_s'] / to['examples_per_s'], '{:.2f}×'),
        _fmt(to['cpu_s_per_example'] / ra['cpu_s_per_example'], '{:.2f}×'),
        _fmt(r['step']), _fmt(None if r['step'] is None else ra['examples_per_s'] / r['step'],
                              '{:.1f}×')]) + ' |')
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
  config = FLAGS.config
  ensure_built(config)
  tokenizer = tokens.tokenizer_path(config)
  workers = [int(w) for w in FLAGS.workers]
  sizes = [int(s) or config.model.vision.image_size for s in FLAGS.image_sizes]
  augments = (False, True) if FLAGS.augment else (False,)
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
                       'processes': FLAGS.radjax_workers == 'processes'})
          print(f'{name} {px}px augment={augment} workers={w}: radjax '
                f"{ra['examples_per_s']:.0f} ex/s ({1e3 * ra['self_cpu_s_per_example']:.2f} "
                f"ms/ex of CPU in this process), torch {to['examples_per_s']:.0f} ex/s "
                f"({1e3 * to['self_cpu_s_per_example']:.2f})", file=sys.stderr, flush=True)
  # The step after the pipelines: no JAX threads while the DataLoader forks.
  if FLAGS.step_mfu:
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
        f'host: {os.cpu_count()} CPUs, load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f}'
        + ('' if FLAGS.step_mfu or not steps else
           f'; step on {jax.device_count()} x {jax.devices()[0].device_kind}'))
  print(table(rows))
  if FLAGS.step_mfu:
    print(f'step ex/s: a step at {100 * FLAGS.step_mfu:.0f} % MFU of {FLAGS.peak_tflops:g} '
          'TFLOP/s (analytic FLOPs), not measured here')
  elif not steps:
    print('step ex/s = config.train.batch_size / step seconds (bench/train_step.py on the '
          'accelerator host)')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
