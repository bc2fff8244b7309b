r"""Where a train step's time goes, radjax and HF side by side: op time by kind.

  python bench/op_profile.py --config configs/demo.py --sizes 43m [--steps 3] \
      [--torch_threads 1]

The sides of bench/vs_hf_train.py (same shapes, same weights), each stepped `--steps`
times under its own profiler (jax.profiler: every XLA op of the compiled step;
torch.profiler: every aten op, self time). Op time is summed by kind: matrix products
(with their GFLOP/s, from the compiled HLO's dot shapes for radjax and the FLOPs torch
records for HF), attention kernels, layout copies and transposes, and the rest
(elementwise, norms, reductions, the optimizer). With more than one thread, ops that run
side by side both count, so the sum can exceed the step.
"""
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax._src.lib import _profile_data  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bench import hf_twin, vs_hf_train  # noqa: E402
from radjax.core import host_memory, sharding  # noqa: E402
from radjax.train import setup  # noqa: E402

FLAGS = flags.FLAGS
KINDS = ('matmul', 'attention', 'copy/transpose', 'other')
_INSTR = re.compile(r'^\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]\S* ([\w-]+)\(')


def define_flags():
  config_flags.DEFINE_config_file('config', None, 'Recipe config.', lock_config=True)
  flags.DEFINE_list('sizes', ['demo'], 'demo, config or a size of bench/vs_hf_train.SIZES.')
  flags.DEFINE_integer('steps', 3, 'Profiled steps per side (after 2 warm-up steps).')
  flags.DEFINE_integer('torch_threads', 0, "torch's threads (0: its default).")
  flags.DEFINE_integer('top', 5, 'The slowest ops of each kind and side to list.')


def hlo_ops(hlo_text: str) -> dict:
  """Per op the executable runs (the fusions' insides excluded): (kind, FLOPs, shape, where).
  A fusion is a product when its computation holds a dot, attention when that dot is
  batched under an `attn` scope, a layout copy when it holds a transpose or copy."""
  shapes, body, ops = {}, collections.defaultdict(list), {}
  comp = None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and '{' in line:
      comp = line.split(' ', 1)[0].lstrip('%')
      continue
    m = _INSTR.match(line)
    if m:
      name, dims, opcode = m.groups()
      shapes[name] = [int(d) for d in dims.split(',') if d]
      body[comp].append((opcode, line))
      ops[name] = (comp, opcode, line)
  fused = {c for _, _, line in ops.values() for c in re.findall(r'calls=%([\w.\-]+)', line)}
  result = {}
  for name, (comp, opcode, line) in ops.items():
    if comp in fused:
      continue
    called = re.search(r'calls=%([\w.\-]+)', line)
    inside = body.get(called.group(1), []) if called else [(opcode, line)]
    dots = [text for op, text in inside if op == 'dot']
    flops = sum(_dot_flops(d, shapes) for d in dots)
    if flops:
      attention = any('/attn/' in d and re.search(r'lhs_batch_dims=\{\d', d) for d in dots)
      kind = 'attention' if attention else 'matmul'
    elif any(op in ('copy', 'transpose') for op, _ in inside):
      kind = 'copy/transpose'
    else:
      kind = 'other'
    where = re.search(r'op_name="([^"]*)"', line)
    result[name] = (kind, flops, shapes[name], _short(where.group(1)) if where else '')
  return result


def _short(op_name: str) -> str:
  """An op name's last layer scope and op ('layers_3/mlp/gate/dot_general'), 'bwd:'
  marked when it is the backward pass's."""
  parts = op_name.split(';')[0].split('/')
  return ('bwd:' if 'transpose(' in op_name else '') + '/'.join(parts[-3:])


def _dot_flops(line: str, shapes: dict) -> int:
  """2 x output elements x contracted size, from a dot's operand shapes."""
  m = re.search(r'\bdot\(%?([\w.\-]+)[^,]*, %?([\w.\-]+)', line)
  out = re.search(r'= \w+\[([\d,]*)\]', line)
  contract = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', line)
  lhs = shapes.get(m.group(1)) if m else None
  if lhs is None or out is None or contract is None:
    return 0
  k = int(np.prod([lhs[int(d)] for d in contract.group(1).split(',') if d]))
  return 2 * k * int(np.prod([int(d) for d in out.group(1).split(',') if d]))


def radjax_profile(side: dict, arrays: dict, steps: int) -> dict:
  """Op time (ns) and FLOPs by kind, and the slowest ops, from a jax.profiler trace."""
  exp = side['exp']
  with sharding.activation_rules(exp.mesh, exp.rules):
    text = setup.jit_train_step(exp).lower(exp.state, arrays).compile().as_text()
  ops = hlo_ops(text)
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(steps):
      side['run']()
    jax.profiler.stop_trace()
    data = _profile_data.ProfileData.from_file(glob.glob(f'{d}/**/*.xplane.pb',
                                                         recursive=True)[-1])
    per_op = collections.Counter()
    for plane in data.planes:
      for line in plane.lines:
        for ev in line.events:
          if ev.name in ops:
            per_op[ev.name] += ev.duration_ns
  return _by_kind({n: (ops[n][0], ops[n][1] * steps, t, f'{n} {ops[n][2]} {ops[n][3]}')
                   for n, t in per_op.items()}, steps)


def hf_profile(side: dict, steps: int) -> dict:
  """The same from torch.profiler: self time per aten op, FLOPs where torch records them."""
  from torch import profiler
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU], with_flops=True) as p:
    for _ in range(steps):
      side['run']()
  ops = {}
  for e in p.key_averages():
    if not e.key.startswith('aten::'):
      continue
    if e.key in ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::matmul'):
      kind = 'matmul'
    elif 'scaled_dot_product' in e.key:
      kind = 'attention'
    elif e.key in ('aten::copy_', 'aten::clone', 'aten::contiguous', 'aten::transpose',
                   'aten::t', 'aten::permute'):
      kind = 'copy/transpose'
    else:
      kind = 'other'
    ops[e.key] = (kind, e.flops, int(e.self_cpu_time_total * 1e3),
                  f'{e.key} ({e.count // steps} per step)')
  return _by_kind(ops, steps)


def _by_kind(ops: dict, steps: int) -> dict:
  kinds = {k: [0, 0] for k in KINDS}  # ns, flops
  for kind, flops, ns, _ in ops.values():
    kinds[kind][0] += ns
    kinds[kind][1] += flops
  slowest = sorted(((ns / steps, flops / steps, kind, what) for kind, flops, ns, what
                    in ops.values()), key=lambda op: -op[0])
  return dict(kinds={k: (ns / steps, fl / steps) for k, (ns, fl) in kinds.items()},
              slowest=slowest)


def table(size: str, profiles: dict) -> str:
  rows = []
  for side, prof in profiles.items():
    total = sum(ns for ns, _ in prof['kinds'].values())
    for kind, (ns, flops) in prof['kinds'].items():
      rate = f'{flops / ns:.0f}' if flops and ns else '-'
      rows.append([size, side, kind, f'{ns / 1e6:,.1f}', f'{100 * ns / total:.1f} %', rate])
    rows.append([size, side, '**all ops**', f'{total / 1e6:,.1f}', '100 %', '-'])
  return hf_twin.markdown(['size', 'side', 'kind', 'op time per step (ms)', 'share',
                           'GFLOP/s'], rows)


def main(argv):
  del argv
  host_memory.restart_with(FLAGS.config.runtime.host_allocator)
  hf_twin.start(FLAGS.torch_threads, f'; host memory: {host_memory.in_effect()}')
  for size in FLAGS.sizes:
    _, batch, sides = vs_hf_train.build_sides(FLAGS.config, size, label_head=False)
    radjax, hf = sides[0], sides[-1]
    exp = radjax['exp']
    arrays = {k: jax.ShapeDtypeStruct((len(batch['tokens']), *f.shape), f.dtype)
              for k, f in exp.task.batch_spec().items()}
    for s in (radjax, hf):  # warm-up: compiled, caches and allocator settled
      s['run']()
      s['run']()
    profiles = {'radjax': radjax_profile(radjax, arrays, FLAGS.steps),
                'HF eager': hf_profile(hf, FLAGS.steps)}
    print(table(size, profiles))
    for side, prof in profiles.items():
      print(f'\n{side}: the slowest ops of each kind, per step')
      for kind in KINDS:
        for ns, flops, _, what in [op for op in prof['slowest'] if op[2] == kind][:FLAGS.top]:
          rate = f'{flops / ns:.0f} GFLOP/s' if flops else ''
          print(f'  {kind:<15} {ns / 1e6:8.1f} ms {rate:>14}  {what}')


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
