"""optax AdamW with warmup + cosine, global-norm clipping, and regex parameter groups.

A group is either frozen (no optimizer state; its gradients are zeroed, which
lets XLA drop their computation) or trained with an LR multiplier. Weight decay
applies to weight matrices only (big_vision's rule): not biases, norm scales, embeddings,
position tables or codebooks.
"""
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
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


# The weight matrices: Dense kernels, and the label head's per-label linear ('out', a
# matrix its einsum reads; it went undecayed under a kernel-only rule).
_DECAYED = ('kernel', 'out')


def decays(path) -> bool:
  return path_str(path).rsplit('/', 1)[-1] in _DECAYED


def make_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  """Linear warmup from optim.warmup_init_lr to optim.lr, then a cosine down to
  lr * min_lr_ratio at num_steps. optim.schedule 'cosine': the cosine spans the steps after
  the warmup (HF's get_cosine_schedule_with_warmup, optax's warmup_cosine_decay).
  'lavis': LAVIS's linear_warmup_cosine_lr (MiniGPT-4, XrayGPT), the cosine of the whole
  run read at the step, so the warmup ends below lr (at cos(pi * warmup / num_steps)).
  'log_warmup': DeepSpeed's WarmupLR default (LLM-CXR), which steps after each update:
  update k (1-based) at log(k - 1) / log(warmup) of the way (the first two at
  warmup_init_lr), the peak from update warmup + 1, then as 'cosine' (constant with
  min_lr_ratio 1). A warmup of 0 or 1 starts at the peak (DeepSpeed raises it to 2: two
  updates at warmup_init_lr)."""
  warmup = min(optim_cfg.warmup_steps, max(num_steps - 1, 0))
  init = float(optim_cfg.get('warmup_init_lr', 0.0))
  peak, end = optim_cfg.lr, optim_cfg.lr * optim_cfg.min_lr_ratio
  kind = optim_cfg.get('schedule', 'cosine')
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=init, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=end)
  if kind == 'log_warmup':
    decay = optax.cosine_decay_schedule(peak, max(num_steps - warmup, 1),
                                        alpha=end / peak if peak else 0.0)
    if warmup <= 1:  # log(1) = 0: no curve to climb
      return decay

    def log_warmup(count):  # count = DeepSpeed's last_batch_iteration + 1
      count = jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)
      return init + (peak - init) * jnp.log(count) / math.log(warmup)
    return optax.join_schedules([log_warmup, decay], [warmup])
  if kind != 'lavis':
    raise ValueError(f"config.optim.schedule: {kind!r} is not 'cosine', 'lavis' or "
                     "'log_warmup'")
  total = max(num_steps, 1)

  def cosine(count):  # count: steps since the warmup ended
    t = jnp.asarray(count, jnp.float32) + warmup
    return end + (peak - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t / total))
  if not warmup:
    return cosine
  return optax.join_schedules([optax.linear_schedule(init, peak, warmup), cosine], [warmup])


def make_optimizer(optim_cfg, num_steps: int, labels) -> tuple[optax.GradientTransformation,
                                                                optax.Schedule]:
  schedule = make_schedule(optim_cfg, num_steps)
  decay_mask = lambda p: jax.tree_util.tree_map_with_path(lambda path, _: decays(path), p)
  transforms = {FROZEN: optax.set_to_zero()}
  for i, (_, spec) in enumerate(optim_cfg.param_groups):
    if spec == FROZEN:
      continue
    scale = float(spec)
    transforms[f'group{i}'] = optax.adamw(
        lambda step, s=scale: schedule(step) * s, b1=optim_cfg.b1, b2=optim_cfg.b2,
        eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, mask=decay_mask)
  used = set(jax.tree.leaves(labels))
  transforms = {k: v for k, v in transforms.items() if k in used}
  chain = [optax.clip_by_global_norm(optim_cfg.clip_norm)] if optim_cfg.clip_norm else []
  chain.append(optax.multi_transform(transforms, labels))
  return optax.chain(*chain), schedule
