r"""Per-device memory of a recipe's training, from shapes alone: nothing the size of the
model is ever allocated, so a 13B RadFM fits the analysis on a laptop, and no dataset is
read (the batch's shapes come from the config: data.max_len, data.max_images, AnyRes's tile
slots), so a run can be sized before its data is built.

  python bench/memory.py --config configs/radfm.py --devices 1,8 [--compile_llm_layers 4]
      [--config.train.batch_size=8 --config.data.max_len=2048 ...]

For each device count n (emulated CPU devices; the script asks XLA for 8), the mesh is
fsdp=n and the report gives
  * parameters and optimizer state per device: exact, from the abstract train state's
    shardings (every leaf's shard shape x its dtype), for the config as it is;
  * XLA's memory_analysis of each train step a run of the config executes (state
    donated): argument, output, temp (activations, gradients, workspace) and alias bytes
    per device; the table gives the largest. A step per kind of batch the data gives
    (radjax/data/mixture.py train_kinds): 2D images (and text) in batches of
    train.batch_size; a mixture's 'volume' components (a 'vit3d' tower) in batches of
    data.volume_batch_size, as deep as the deepest bucket (and at
    data.volume_image_size in-plane, as training resizes such a batch). With
    --compile_llm_layers k the step is compiled with the decoder cut to k layers (scanned
    layers compile alike at any depth, but a CPU compile of 40 takes long); parameter and
    optimizer bytes above are still the full model's.
With --processes N the steps are built as on N processes (jax.process_count() reads N
while the script runs; one process compiles): what differs is a volume batch, which stays
at the tower's full size and depth, the step's model choosing its depth bucket and
resizing it in-plane (radjax/models/vlm.py _volume_slots), where one process's host trims
and resizes it.
"""
import os
import sys

if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                             + ' --xla_force_host_platform_device_count=8')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax import tasks  # noqa: E402
from radjax.core import config_checks  # noqa: E402
from radjax.data import mixture, pipeline  # noqa: E402
from radjax.train import setup  # noqa: E402
from radjax.train import state as state_lib  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  """This script's flags (not at import: main.py --mode=dry_run imports the module)."""
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_string('devices', '1,8', 'Device counts to compare (mesh fsdp = count).')
  flags.DEFINE_integer('compile_llm_layers', 0, 'Decoder layers in the compiled step (0: the '
                       "config's); parameter/optimizer bytes always use the config's.")
  flags.DEFINE_bool('compile', True, 'Also compile the train step for memory_analysis.')
  flags.DEFINE_integer('processes', 1, 'Build the steps as a run on this many processes '
                       'does (module doc).')
GIB = 2 ** 30


def per_device_bytes(tree) -> int:
  """Bytes one device holds of ShapeDtypeStructs with shardings (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shard = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
    total += math.prod(shard) * x.dtype.itemsize
  return total


def count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def experiment(config, n: int, llm_layers: int = 0, fsdp: bool = True):
  """The abstract experiment on the first n devices, mesh fsdp=n (fsdp=False: the
  config's own mesh)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if fsdp:
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, n, 1
    if llm_layers:
      config.model.llm.num_layers = llm_layers
    if config.model.image_token_id < 0:  # no tokenizer here: synthetic shapes
      config.model.image_token_id = 4
  config_checks.check(config)  # a zero size named, before a part divides by it
  task = tasks.make(config, None)
  # The train step's checks and micro-batches (optim.grad_accum from
  # train.micro_batch_per_device), as a run derives them; build(train=False) then
  # allocates nothing.
  setup.preflight(config, jax.devices()[:n], train=True)
  exp = setup.build(config, task, jax.devices()[:n], pretrained=False, train=False)
  abstract, shardings = state_lib.abstract_train_state(exp.model, task.init_inputs(), exp.tx,
                                                       exp.mesh, exp.rules)
  return dataclasses.replace(exp, state=abstract, state_shardings=shardings)


def step_batches(exp) -> dict[str, dict]:
  """The abstract batch of each train step a run of exp.config executes, by kind: one per
  kind of batch its data gives (mixture.train_kinds: 'image' without a mixture; a
  mixture's 'image' and / or 'volume' components, each batched apart), at the size the
  pipeline feeds it (pipeline.batch_size: train.batch_size, data.volume_batch_size) and,
  for volumes, the deepest depth bucket (config.data.max_slices, else the tower's
  max_depth)."""
  out = {}
  for kind in mixture.train_kinds(exp.config):
    b = pipeline.batch_size(exp.config, kind)[1]
    # A task without kinds of batch (text, the codec) has one batch spec for every kind.
    spec = exp.task.batch_spec(kind) if hasattr(exp.task, 'slots') else exp.task.batch_spec()
    out[kind] = {k: jax.ShapeDtypeStruct((b, *f.shape), f.dtype,
                                         sharding=exp.batch_shardings[k])
                 for k, f in spec.items()}
  return out


def compiled_steps(exp) -> tuple[dict[str, dict], float]:
  """Each step of step_batches compiled: its memory by kind (with its batch size), and the
  compile seconds of all."""
  t0, out = time.perf_counter(), {}
  for kind, batch in step_batches(exp).items():
    with exp.context():
      compiled = setup.jit_train_step(exp).lower(exp.state, batch).compile()
    m = compiled.memory_analysis()
    out[kind] = {k: getattr(m, f'{k}_size_in_bytes')
                 for k in ('argument', 'output', 'temp', 'alias')}
    out[kind]['batch'] = next(iter(batch.values())).shape[0]
  return out, time.perf_counter() - t0


def compiled_memory(exp) -> tuple[dict, float]:
  """The compiled memory of the largest step a run executes (compiled_steps; a 'vit3d'
  VLM whose mixture has images and volumes runs a step of each), and the compile
  seconds."""
  steps, secs = compiled_steps(exp)
  largest = max(steps.values(), key=peak)
  return {k: largest[k] for k in ('argument', 'output', 'temp', 'alias')}, secs


def peak(mem: dict) -> int:
  """Peak bytes per device of a compiled step: arguments + temp + outputs that do not reuse
  a donated argument."""
  return mem['argument'] + mem['temp'] + mem['output'] - mem['alias']


def dry_run(config) -> dict:
  """`main.py --mode=dry_run`: the train step compiled for the configured mesh on every
  visible device (emulated CPU devices work: XLA_FLAGS=--xla_force_host_platform_device_count=N),
  per-device memory printed; nothing the size of the model is allocated."""
  n = jax.device_count()
  if config.runtime.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.runtime.attention_impl = 'xla'
    print(f"dry run on {jax.default_backend()}: attention_impl 'cudnn' compiled as 'xla', "
          'which holds the attention scores: the temp bytes are an upper bound')
  exp = experiment(config, n, fsdp=False)
  steps, secs = compiled_steps(exp)
  size = lambda b: f'{b / GIB:.2f} GiB' if b >= GIB / 10 else f'{b / 2**20:.2f} MiB'  # noqa: E731
  keys = ('argument', 'output', 'temp', 'alias', 'peak')
  for kind, mem in steps.items():
    mem['peak'] = peak(mem)
    if len(steps) > 1:
      print(f'dry run, the {kind} step (batches of {mem["batch"]}): '
            + ', '.join(f'{k} {size(mem[k])}' for k in keys))
  kind, largest = max(steps.items(), key=lambda item: item[1]['peak'])
  out = dict(devices=n, mesh=dict(exp.mesh.shape), count=count(exp.state.params),
             params=per_device_bytes(exp.state.params),
             opt=per_device_bytes(exp.state.opt_state), compile_secs=secs,
             **{k: largest[k] for k in keys}, steps=steps)
  print(f'dry run: {out["count"] / 1e6:.1f}M params on {n} '
        f'{jax.devices()[0].platform} devices, mesh {out["mesh"]}; per device: params '
        f'{size(out["params"])}, optimizer {size(out["opt"])}; compiled step ({secs:.0f} s; '
        f'{kind} batches of {largest["batch"]}'
        + (f' in {accum} micro-batches' if (accum := exp.config.optim.grad_accum) > 1 else '')
        + (', the largest' if len(steps) > 1 else '')
        + '): ' + ', '.join(f'{k} {size(out[k])}' for k in keys))
  return out


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.processes > 1:  # every process compiles the same program: emulate their count
    jax.process_count = lambda: FLAGS.processes
  cpu = platform.processor() or platform.machine()
  print(f'machine: {cpu}, {os.cpu_count()} cores, jax {jax.__version__}, '
        f'{jax.device_count()} emulated {jax.devices()[0].platform} devices')
  c = config
  batches = ', '.join(f'{kind} batches of {pipeline.batch_size(c, kind)[1]}'
                      for kind in mixture.train_kinds(c))
  print(f'model: vision {c.model.vision.kind} {c.model.vision.num_layers}L, projector '
        f'{c.model.projector.kind}, llm {c.model.llm.embed_dim}x{c.model.llm.num_layers}L; '
        f'{batches} x {c.data.max_len} tokens, {c.data.max_images} images; '
        f'dtype {c.runtime.dtype}, remat {c.runtime.remat.llm}'
        + (f'; as on {FLAGS.processes} processes' if FLAGS.processes > 1 else ''))
  rows = []
  for n in (int(x) for x in FLAGS.devices.split(',')):
    exp = experiment(config, n)
    params, opt = per_device_bytes(exp.state.params), per_device_bytes(exp.state.opt_state)
    line = dict(n=n, params=params, opt=opt, count=count(exp.state.params))
    print(f'[{n} device(s), fsdp={n}] {line["count"] / 1e9:.3f}B params: per device params '
          f'{params / GIB:.2f} GiB, optimizer {opt / GIB:.2f} GiB', flush=True)
    if FLAGS.compile:
      small = experiment(config, n, FLAGS.compile_llm_layers) if FLAGS.compile_llm_layers \
          else exp
      steps, secs = compiled_steps(small)
      for kind, mem in steps.items():
        print(f'  compiled {kind} step ({small.config.model.llm.num_layers} decoder layers, '
              f'batches of {mem["batch"]}): ' + ', '.join(
                  f'{k} {mem[k] / GIB:.2f} GiB' for k in ('argument', 'output', 'temp', 'alias'))
              + f', peak {peak(mem) / GIB:.2f} GiB', flush=True)
      mem = max(steps.values(), key=peak)  # the table: the largest step
      line.update({k: mem[k] for k in ('argument', 'output', 'temp', 'alias')},
                  layers=small.config.model.llm.num_layers, secs=secs,
                  small_state=per_device_bytes(small.state))
      print(f'  compiled in {secs:.0f} s', flush=True)
    rows.append(line)
  base = rows[0]
  # Peak per device: arguments + temp + outputs that do not reuse a donated argument.
  print('\n| devices | params/device | optimizer/device | step arguments | step temp | '
        'step peak (args + temp + unaliased out) | shrink params+opt | shrink peak |')
  print('|---|---|---|---|---|---|---|---|')
  for r in rows:
    shrink = (base['params'] + base['opt']) / (r['params'] + r['opt'])
    cells = ['-'] * 4
    if 'argument' in r:
      cells = [f'{r["argument"] / GIB:.2f} GiB', f'{r["temp"] / GIB:.2f} GiB',
               f'{peak(r) / GIB:.2f} GiB', f'{peak(base) / peak(r):.2f}x']
    print(f'| {r["n"]} | {r["params"] / GIB:.2f} GiB | {r["opt"] / GIB:.2f} GiB | '
          f'{cells[0]} | {cells[1]} | {cells[2]} | {shrink:.2f}x | {cells[3]} |')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
