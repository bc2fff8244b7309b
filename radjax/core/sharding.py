"""Mesh from config, logical axis rules, born-sharded state, replicated-param check."""
import contextlib
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from radjax.core import defaults

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  for a, s in zip(MESH_AXES, sizes):
    if s < 1 and s != -1:
      raise ValueError(f'config.mesh.{a}={s} must be >= 1 (or -1: the remaining devices)')
  if sizes.count(-1) > 1:
    named = ', '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes))
    raise ValueError(f'config.mesh: only one of {MESH_AXES} may be -1 (the remaining '
                     f'devices), got {named}: give the others sizes, e.g. '
                     '--config.mesh.data=1 --config.mesh.fsdp=-1')
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      given = ' x '.join(f'{a}={s}' for a, s in zip(MESH_AXES, sizes) if s != -1)
      raise ValueError(f'config.mesh: {num_devices} devices are not divisible by {given} '
                       f'(= {known}), so config.mesh.{MESH_AXES[sizes.index(-1)]}=-1 has no '
                       'size')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f'config.mesh: data*fsdp*tensor = {math.prod(sizes)} but there are '
                     f'{num_devices} devices')
  return tuple(sizes)


def dcn_shape(mesh_cfg) -> tuple[int, ...]:
  """config.mesh.dcn's sizes (all 1 when the config has none)."""
  dcn = mesh_cfg.get('dcn') or {}
  sizes = tuple(int(dcn.get(a, 1)) for a in MESH_AXES)
  for a, s in zip(MESH_AXES, sizes):
    if s < 1:
      raise ValueError(f'config.mesh.dcn.{a}={s} must be >= 1')
  return sizes


def hybrid_device_array(mesh_cfg, devices: Sequence[Any]) -> np.ndarray:
  """Devices laid out as data x fsdp x tensor when config.mesh.dcn spans hosts: hosts
  (TPU slices where devices have a slice_index, else processes) along the dcn sizes,
  each host's devices along config.mesh's (within-host) sizes."""
  dcn = dcn_shape(mesh_cfg)
  granules = math.prod(dcn)
  by_slice = devices[0].platform == 'tpu' and getattr(devices[0], 'slice_index', None) is not None
  unit = 'slices' if by_slice else 'processes'
  found = len({getattr(d, 'slice_index' if by_slice else 'process_index') for d in devices})
  if found != granules:
    raise ValueError(f'config.mesh.dcn: data*fsdp*tensor = {granules} '
                     f'({dict(zip(MESH_AXES, dcn))}) but the {len(devices)} devices are on '
                     f'{found} {unit}')
  try:
    ici = mesh_shape(mesh_cfg, len(devices) // granules)
  except ValueError as e:
    raise ValueError(f'{e} (per one of the {granules} {unit}: config.mesh sizes are within a '
                     'host when config.mesh.dcn spans hosts)') from None
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice,
                                              allow_split_physical_axes=True)


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  # Auto axes: the compiler propagates shardings from our logical constraints.
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if math.prod(dcn_shape(mesh_cfg)) > 1:
    return Mesh(hybrid_device_array(mesh_cfg, devices), MESH_AXES, axis_types=axis_types)
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except ValueError:  # device-topology helpers refuse some CPU device subsets
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def rules_from_config(rules) -> tuple:
  out = []
  for name, axes in rules:
    if isinstance(axes, list):
      axes = tuple(axes)
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f'config.sharding.rules: {name!r} maps to unknown mesh axis {a!r}')
    out.append((name, axes))
  return tuple(out)


def check_rule_names(rules, boxed_params, activation_names) -> None:
  """Each rule names an axis of these parameters (their logical axes), of the
  activations (`activation_names`) or of the default table (which serves every model):
  flax skips a rule whose name nothing uses, so a misspelt one ('embd') left its
  parameters replicated without a word."""
  used = set(activation_names) | {name for name, _ in defaults.DEFAULT_RULES}
  for spec in jax.tree.leaves(nn.get_partition_spec(boxed_params),
                              is_leaf=lambda x: isinstance(x, PartitionSpec)):
    for entry in spec:
      used.update(entry if isinstance(entry, tuple) else (entry,))
  used.discard(None)
  for name, _ in rules:
    if name not in used:
      raise ValueError(f"config.sharding.rules: {name!r} names no axis of this model's "
                       f'parameters or activations (a misspelling?); they are '
                       f'{", ".join(sorted(used))}')


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules):
  """Context under which model code's logical constraints resolve to this mesh."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly LogicallyPartitioned) abstract values. A leaf
  axis that its mesh axes do not divide is a ValueError naming the parameter and the knobs
  (XLA's own error names neither)."""
  check_divisible(abstract_tree, mesh, rules)
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def check_divisible(abstract_tree, mesh: Mesh, rules) -> None:
  """Every axis of a LogicallyPartitioned leaf splits evenly over the mesh axes its logical
  name maps to; else a one-line ValueError naming the first leaf that does not."""
  leaves = jax.tree_util.tree_flatten_with_path(
      abstract_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
  for path, leaf in leaves:
    if not isinstance(leaf, nn.LogicallyPartitioned):
      continue
    shape = tuple(leaf.value.shape)
    spec = nn.logical_to_mesh_axes(leaf.names, rules)
    for dim, (name, size, axes) in enumerate(zip(leaf.names, shape, spec)):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      axes = tuple(a for a in axes if a in mesh.shape)
      split = math.prod(mesh.shape[a] for a in axes)
      if size % split:
        sizes = ' x '.join(f'{a}={mesh.shape[a]}' for a in axes)
        knobs = ' / '.join(f'config.mesh.{a}' for a in axes)
        raise ValueError(
            f'parameter {jax.tree_util.keystr(path, simple=True, separator="/")} of shape '
            f'{shape}: its axis {dim} ({name!r}, size {size}) is split over mesh axes '
            f'{sizes} ({split} shards), which do not divide {size}; use a {knobs} that '
            f'divides {size}, or map {name!r} to None in config.sharding.rules')


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  """Leading axis over the batch mesh axes, the rest replicated."""
  spec = nn.logical_to_mesh_axes(('act_batch',) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, spec)


def batch_axes(mesh: Mesh, rules) -> tuple[tuple[str, ...], int]:
  """The mesh axes a batch is sharded on, and how many shards they make (the smallest
  batch the mesh takes)."""
  axes = batch_sharding(mesh, rules, 1).spec[0] or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  shards = 1
  for a in axes:
    shards *= mesh.shape[a]
  return axes, shards


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def born_sharded(init_fn: Callable, shardings, mesh: Mesh, rules, *args):
  """Runs `init_fn(*args)` under jit with `out_shardings=shardings`, so each leaf is
  created directly in its shard; the result never exists whole on one device."""
  with activation_rules(mesh, rules):
    return jax.jit(init_fn, out_shardings=shardings)(*args)


def warn_replicated(params, shardings, warn_mib: float) -> list[str]:
  """Names big parameters that every device holds whole (a sharding-rule mistake), and
  says so when many small ones add up past warn_mib (a part whose params were given no
  logical axes, or whose axes the rules map to None). Returns the names it warned of ('*'
  for the sum)."""
  flagged, small, total = [], 0, 0.0
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  shard_leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, leaf), sh in zip(leaves, shard_leaves):
    # A mesh whose only axis over 1 is `data` (replicas, a recipe's or eval's choice) has
    # nothing to shard parameters over: replication there is no mistake.
    if not (sh.is_fully_replicated and
            any(n > 1 for a, n in sh.mesh.shape.items() if a != 'data')):
      continue
    mib = leaf.size * leaf.dtype.itemsize / 2**20
    if mib > warn_mib:
      name = jax.tree_util.keystr(path)
      flagged.append(name)
      logging.warning('parameter %s (%.1f MiB) is replicated on every device', name, mib)
    else:
      small, total = small + 1, total + mib
  if total > warn_mib:
    flagged.append('*')
    logging.warning('%d smaller parameters, %.1f MiB in all, are replicated on every device '
                    '(parameters without logical axes, or rules that map theirs to None)',
                    small, total)
  return flagged


def check_batch_over_processes(devices: np.ndarray, batch_axes: tuple[str, ...]) -> None:
  """Each process reads its own 1/P of every batch (radjax/data/pipeline.py), so the mesh
  must give each process's devices that many of the batch shards, none of another
  process's. A mesh whose batch axes stay within a host (the hosts along tensor only)
  would have every process hold rows that all of them fill with different examples:
  jax.make_array_from_process_local_data takes them as equal, and the run trains on
  inconsistent data. `devices`: the mesh's device array (data x fsdp x tensor)."""
  shape = dict(zip(MESH_AXES, devices.shape))
  shards = math.prod(shape[a] for a in batch_axes)
  held: dict[int, set] = {}
  for pos in np.ndindex(devices.shape):
    at = dict(zip(MESH_AXES, pos))
    shard = int(np.ravel_multi_index([at[a] for a in batch_axes],
                                     [shape[a] for a in batch_axes])) if batch_axes else 0
    held.setdefault(devices[pos].process_index, set()).add(shard)
  processes = len(held)
  if processes > 1 and any(len(s) * processes != shards for s in held.values()):
    most = max(len(s) for s in held.values())
    raise ValueError(
        f'config.mesh: the batch splits into {shards} shards over '
        f'{" x ".join(batch_axes) or "no mesh axis"}, and one of the {processes} processes '
        f'holds {most} of them, not its own {shards // processes or "1/" + str(processes)}: '
        'every process reads different examples, so the processes must lie along the batch '
        'axes (config.mesh.dcn.data or dcn.fsdp = processes; dcn.tensor = 1)')
