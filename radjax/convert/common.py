"""Reversible tensor transforms and a table-driven converter shared by model families.

A family describes itself as a list of `Rule`s (our param path <-> HF tensor name,
plus a transform id). Per-layer rules carry `{i}` and are written for a stack named
`layers`; the engine handles both radjax layouts: unscanned (`layers_{i}/...`) and scanned
(`layers/...`, leading layer axis). A model whose HF layers are split over several of our
stacks passes `Stack`s saying which HF layer range each stack holds.
Transforms only reshape/transpose, so they are written with array methods and work
on numpy arrays and on `jax.ShapeDtypeStruct`s (via `jax.eval_shape`) alike, which is
how expected HF shapes are derived without materialising anything.
"""
import dataclasses
import re
from typing import Callable, Optional, Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Transform:
  to_ours: Callable  # HF array -> our array
  to_hf: Callable  # our array -> HF array


IDENTITY = Transform(lambda x: x, lambda x: x)
# torch Linear weight is (out, in); our Dense kernel is (in, out).
LINEAR = Transform(lambda w: w.T, lambda k: k.T)


def linear_out_heads(heads: int, head_dim: int) -> Transform:
  """q/k/v projection: HF (heads*head_dim, embed) <-> ours (embed, heads, head_dim)."""
  return Transform(
      lambda w: w.reshape(heads, head_dim, w.shape[-1]).transpose(2, 0, 1),
      lambda k: k.transpose(1, 2, 0).reshape(heads * head_dim, k.shape[0]))


def linear_in_heads(heads: int, head_dim: int) -> Transform:
  """Output projection: HF (embed, heads*head_dim) <-> ours (heads, head_dim, embed)."""
  return Transform(
      lambda w: w.reshape(w.shape[0], heads, head_dim).transpose(1, 2, 0),
      lambda k: k.transpose(2, 0, 1).reshape(k.shape[2], heads * head_dim))


def bias_heads(heads: int, head_dim: int) -> Transform:
  """Projection bias: HF (heads*head_dim,) <-> ours (heads, head_dim)."""
  return Transform(lambda b: b.reshape(heads, head_dim),
                   lambda b: b.reshape(heads * head_dim))


@dataclasses.dataclass(frozen=True)
class Rule:
  ours: str  # '/'-joined path; per-layer rules start with `layers_{i}/`
  hf: str  # HF state-dict name; per-layer names contain `{i}`
  transform: str  # key into the family's transform dict
  when: Optional[str] = None  # config predicate name; the rule applies only if true


LAYER_PREFIX, SCANNED_PREFIX = 'layers_{i}/', 'layers/'


@dataclasses.dataclass(frozen=True)
class Stack:
  """Our layer stack `name` holds HF layers `hf_start .. hf_start + count - 1`."""
  name: str
  count: int
  hf_start: int = 0

  def path(self, ours: str, i: int, scan: bool) -> str:
    """Our path of per-layer rule path `ours` (written as `layers_{i}/...`) for layer i."""
    if scan:
      return ours.replace(LAYER_PREFIX, f'{self.name}/')
    return ours.replace(LAYER_PREFIX, f'{self.name}_{{i}}/').format(i=i)


def _stacks(num_layers: int, stacks: Optional[Sequence[Stack]]) -> tuple:
  return tuple(stacks) if stacks is not None else (Stack('layers', num_layers),)


class ConversionError(ValueError):
  """A tensor that does not fit the mapping (name, shape, vocab or family)."""


def flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    path = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(flatten(v, path + '/'))
    else:
      out[path] = v
  return out


def shapes_of(module, *inputs) -> dict:
  """Flat {path: shape} of `module`'s params for these example inputs (nothing allocated)."""
  import flax.linen as nn
  tree = nn.meta.unbox(jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs)))
  return {p: tuple(s.shape) for p, s in flatten(tree['params']).items()}


def unflatten(flat: dict) -> dict:
  tree = {}
  for path, v in flat.items():
    *parents, leaf = path.split('/')
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _hf_shape(t: Transform, shape: tuple) -> tuple:
  return tuple(jax.eval_shape(t.to_hf, jax.ShapeDtypeStruct(shape, np.float32)).shape)


def _expand(rules, stacks):
  """Yields (rule, stack or None, our layer index or None, HF name)."""
  for r in rules:
    if '{i}' in r.hf:
      for st in stacks:
        for i in range(st.count):
          yield r, st, i, r.hf.format(i=st.hf_start + i)
    else:
      yield r, None, None, r.hf


def to_ours(state_dict: dict, rules, transforms: dict, expected: dict, num_layers: int,
            scan: bool, ignore: str = r'$^', stacks: Optional[Sequence[Stack]] = None,
            skip: str = r'$^') -> dict:
  """HF state dict -> flat {our path: f32 array}; `expected` maps our paths to shapes
  in the target layout. Every HF tensor must be used (bar names matching `ignore`) and
  every expected param produced. `stacks` defaults to one stack `layers` of `num_layers`.
  Params whose target-layout path fullmatches `skip` (config.model.<part>.init_fresh) are
  left out: their HF tensors need not be there and may have any shape."""
  used, per_layer, flat = set(), {}, {}
  for r, st, i, name in _expand(rules, _stacks(num_layers, stacks)):
    ours_path = st.path(r.ours, i, scan=False) if st is not None else r.ours
    layer_path = st.path(r.ours, i, scan) if st is not None else r.ours
    if re.fullmatch(skip, layer_path):
      used.add(name)
      continue
    if name not in state_dict:
      raise ConversionError(f'HF tensor {name!r} is missing from the checkpoint')
    t = transforms[r.transform]
    want = expected.get(layer_path)
    if want is None:
      raise ConversionError(f'HF tensor {name!r} maps to {ours_path!r}, which the model '
                            'does not have')
    if scan and st is not None:
      want = want[1:]
    hf_want = _hf_shape(t, want)
    arr = np.asarray(state_dict[name])
    if arr.shape != hf_want:
      raise ConversionError(f'HF tensor {name!r} has shape {arr.shape}, expected {hf_want} '
                            f'for {ours_path!r}')
    used.add(name)
    val = np.ascontiguousarray(t.to_ours(arr.astype(np.float32)))
    if scan and st is not None:
      per_layer.setdefault(layer_path, [None] * st.count)[i] = val
    else:
      flat[layer_path] = val
  for path, vals in per_layer.items():
    flat[path] = np.stack(vals)
  unused = sorted(n for n in state_dict if n not in used and not re.search(ignore, n))
  if unused:
    raise ConversionError(f'HF tensors not used by the conversion: {unused}')
  missing = sorted(p for p in set(expected) - set(flat) if not re.fullmatch(skip, p))
  if missing:
    raise ConversionError(f'model params not produced by the conversion: {missing}')
  return flat


def to_hf(flat: dict, rules, transforms: dict, expected: dict, num_layers: int,
          stacks: Optional[Sequence[Stack]] = None) -> dict:
  """Flat {our path: array} (either layout; detected from the paths) -> HF state dict."""
  stacks = _stacks(num_layers, stacks)
  scan = any(p.startswith(f'{st.name}/') for st in stacks for p in flat)
  for path, want in expected.items():
    if path not in flat:
      raise ConversionError(f'model param {path!r} is missing')
    if tuple(flat[path].shape) != tuple(want):
      raise ConversionError(f'model param {path!r} has shape {tuple(flat[path].shape)}, '
                            f'expected {tuple(want)}')
  extra = sorted(set(flat) - set(expected))
  if extra:
    raise ConversionError(f'model params not covered by the conversion: {extra}')
  out = {}
  for r, st, i, name in _expand(rules, stacks):
    if st is None:
      arr = flat[r.ours]
    elif scan:
      arr = flat[st.path(r.ours, i, scan)][i]
    else:
      arr = flat[st.path(r.ours, i, scan)]
    out[name] = np.ascontiguousarray(transforms[r.transform].to_hf(
        np.asarray(arr, np.float32)))
  return out
