"""optax AdamW with warmup + cosine, global-norm clipping, and regex parameter groups.

A group is either frozen (no optimizer state; its gradients are zeroed, which
lets XLA drop their computation) or trained with an LR multiplier. Weight decay
applies to kernels only.
"""
import re
from typing import Any

import jax
import optax

FROZEN = 'frozen'


def path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
                  for k in path)


def param_labels(params, groups) -> Any:
  """Tree of group labels: 'frozen' or 'group<i>'. Every parameter must match a rule."""
  compiled = [(re.compile(rx), spec) for rx, spec in groups]

  def label(path, _):
    name = path_str(path)
    for i, (rx, spec) in enumerate(compiled):
      if rx.fullmatch(name):
        return FROZEN if spec == FROZEN else f'group{i}'
    raise ValueError(f'config.optim.param_groups: parameter {name!r} matches no rule '
                     f'({[rx for rx, _ in groups]})')
  return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(labels) -> Any:
  return jax.tree.map(lambda lab: lab != FROZEN, labels)


def is_kernel(path) -> bool:
  return path_str(path).endswith('kernel')


def make_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  warmup = min(optim_cfg.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim_cfg.lr, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=optim_cfg.lr * optim_cfg.min_lr_ratio)


def make_optimizer(optim_cfg, num_steps: int, labels) -> tuple[optax.GradientTransformation,
                                                                optax.Schedule]:
  schedule = make_schedule(optim_cfg, num_steps)
  kernel_mask = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: is_kernel(path), p)
  transforms = {FROZEN: optax.set_to_zero()}
  for i, (_, spec) in enumerate(optim_cfg.param_groups):
    if spec == FROZEN:
      continue
    scale = float(spec)
    transforms[f'group{i}'] = optax.adamw(
        lambda step, s=scale: schedule(step) * s, b1=optim_cfg.b1, b2=optim_cfg.b2,
        eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, mask=kernel_mask)
  used = set(jax.tree.leaves(labels))
  transforms = {k: v for k, v in transforms.items() if k in used}
  chain = [optax.clip_by_global_norm(optim_cfg.clip_norm)] if optim_cfg.clip_norm else []
  chain.append(optax.multi_transform(transforms, labels))
  return optax.chain(*chain), schedule
