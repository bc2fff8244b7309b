"""What the compile-time, remat and frozen-tower benchmarks share: a recipe's train step
lowered and compiled from abstract shapes (nothing the size of the model allocated, as
bench/memory.py does), its XLA memory and cost analyses, and a measured step time."""
import os
import platform
import time

import jax

from bench import memory, train_step
from radjax.train import setup

GIB, MIB = 2 ** 30, 2 ** 20


def with_overrides(config, overrides: dict):
  """A copy of `config` with dotted keys set ('model.llm.num_layers': 4)."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for key, value in overrides.items():
      *path, leaf = key.split('.')
      section = config
      for p in path:
        section = section[p]
      if leaf not in section:
        raise ValueError(f'override {key}: config has no such key')
      section[leaf] = value
    if config.model.image_token_id < 0:  # no tokenizer here: synthetic batches
      config.model.image_token_id = 4
  return config


def backend_fallbacks(config) -> dict:
  """Overrides a CPU needs for a GPU recipe (cuDNN attention -> xla); none on a GPU."""
  if jax.default_backend() != 'gpu' and config.runtime.attention_impl == 'cudnn':
    return {'runtime.attention_impl': 'xla'}
  return {}


def abstract_batch(exp) -> dict:
  b = exp.config.train.batch_size
  return {k: jax.ShapeDtypeStruct((b, *f.shape), f.dtype, sharding=exp.batch_shardings[k])
          for k, f in exp.task.batch_spec().items()}


def prepare(config):
  """The config with its backend fallbacks applied, after printing the machine line."""
  fallbacks = backend_fallbacks(config)
  print(f'machine: {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, '
        f'{jax.devices()[0].device_kind}; backend overrides: {fallbacks or "none"}')
  return with_overrides(config, fallbacks)


def lower_and_compile(config, devices: int = 1, compile: bool = True) -> dict:
  """Lowers, then compiles (unless not `compile`), the train step of `config` on abstract
  state (mesh fsdp = `devices`). Returns seconds of each phase, the compiled executable
  and the size of the lowered program."""
  exp = memory.experiment(config, devices)
  with exp.context():
    t0 = time.perf_counter()
    lowered = setup.jit_train_step(exp).lower(exp.state, abstract_batch(exp))
    t1 = time.perf_counter()
    compiled = lowered.compile() if compile else None
    t2 = time.perf_counter()
  hlo_lines = lowered.as_text().count('\n')
  return dict(lower_s=t1 - t0, compile_s=t2 - t1, compiled=compiled, hlo_lines=hlo_lines,
              params=memory.count(exp.state.params))


def memory_bytes(compiled) -> dict:
  """XLA's memory_analysis per device; peak = args + temp + outputs not aliased."""
  m = compiled.memory_analysis()
  out = {k: getattr(m, f'{k}_size_in_bytes') for k in ('argument', 'output', 'temp', 'alias')}
  out['peak'] = memory.peak(out)
  return out


def flops(compiled) -> float:
  """XLA's FLOP count of the compiled step. A while loop's body counts once, whatever its
  trip count: compare scanned models only to scanned models (or unroll: scan_layers off)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops'])


def measured_step_s(config, steps: int) -> float:
  """Mean seconds of `steps` real train steps (after 2 warm-up steps) on random state and a
  synthetic batch, on one device."""
  return train_step.time_step(config, steps, jax.devices()[:1])[0]


def size(b: float) -> str:
  return f'{b / GIB:.2f} GiB' if b >= GIB / 10 else f'{b / MIB:.1f} MiB'
