"""Checks of a config's values that its types cannot express; errors name the knob.

`check(config)` runs before a run reads data or builds anything (radjax/run.py
check_config), so a `--config.train.batch_size=0` is a one-line error, not a
ZeroDivisionError deep inside.
"""
import re

# knob -> the smallest value it may take. Knobs a recipe lacks are skipped.
MINIMUMS = {
    'train.num_steps': 1, 'train.batch_size': 1, 'train.log_every': 1,
    'train.checkpoint_every': 1, 'train.keep_checkpoints': 0, 'train.eval_every': 0,
    'train.profile_steps': 0, 'train.profile_first_step': 1, 'train.micro_batch_per_device': 0,
    'optim.grad_accum': 1, 'optim.warmup_steps': 0, 'optim.lr': 0, 'optim.clip_norm': 0,
    'optim.warmup_init_lr': 0, 'optim.eps': 0, 'optim.weight_decay': 0,
    'eval.batch_size': 1, 'eval.num_loss_batches': 0, 'eval.num_generate': 0,
    'eval.max_new_tokens': 1, 'eval.num_beams': 1, 'eval.top_k': 0,
    'data.max_len': 1, 'data.max_images': 1, 'data.worker_threads': 0,
    'data.worker_processes': 0, 'data.max_slices': 0, 'data.pack_shards': 0,
    'data.volume_image_size': 0, 'data.many_images': 0, 'data.many_images_max_slices': 0,
    'data.pack_max_examples': 1, 'data.max_target_tokens': 0, 'data.codes_per_image': 0,
    'model.vision.image_size': 1, 'model.vision.patch_size': 1,
    'model.vision.max_depth': 1, 'model.vision.depth_patch_size': 1,
    **{f'model.{part}.{size}': 1 for part, sizes in (
        ('llm', ('vocab_size', 'embed_dim', 'num_layers', 'num_heads', 'num_kv_heads',
                 'mlp_dim')),
        ('vision', ('embed_dim', 'num_layers', 'num_heads', 'mlp_dim', 'num_channels')),
        ('projector', ('num_queries', 'num_layers', 'num_heads', 'mlp_dim', 'hidden_dim')),
        ('vqgan', ('num_channels', 'image_size', 'base_channels', 'z_channels', 'codebook_size',
                   'codebook_dim', 'norm_groups', 'disc_channels')))
       for size in sizes},
    'model.vqgan.num_res_blocks': 0, 'model.vqgan.disc_layers': 0,
    # A negative loss weight would make the step push that loss up, silently.
    'data.keyword_weight': 0, 'data.label_loss_weight': 0, 'data.box_token_weight': 0,
    **{f'vqgan.{k}': 0 for k in ('l1_weight', 'l2_weight', 'codebook_weight', 'beta',
                                 'disc_weight', 'perceptual_weight', 'disc_start', 'disc_lr',
                                 'restart_every', 'restart_threshold')},
}
# knob -> the closed interval it must lie in.
# min_lr_ratio > 1 made the 'cosine' rise after the warmup, to a multiple of optim.lr.
RANGES = {'vqgan.ema_decay': (0, 1), 'vqgan.usage_decay': (0, 1), 'optim.min_lr_ratio': (0, 1)}
# knob -> a list of (key, value) pairs.
PAIRS = ('optim.param_groups', 'sharding.rules', 'train.pre_stage_set')
MESH_AXES = ('data', 'fsdp', 'tensor')
FLOAT32_MAX = 3.4028234663852886e38
# knob -> the values it may take (text_norm: radjax/eval/metrics/nlg_metrics.py; resize:
# radjax/data/images.py; schedule: radjax/train/optimizer.py; loss_norm: radjax/data/chat.py;
# pixels: radjax/data/pixels.py; decoding: radjax/eval/decoding/generate.py).
CHOICES = {'eval.text_norm': ('radjax', 'r2gen'), 'data.resize': ('square', 'crop'),
           'eval.decoding': ('greedy', 'sample', 'beam'),
           'optim.schedule': ('cosine', 'lavis', 'log_warmup'),
           'data.loss_norm': ('token', 'example'),
           'data.pixels': ('uint8', 'gray8', 'float32')}


def _get(config, dotted: str):
  node = config
  for key in dotted.split('.'):
    if not hasattr(node, 'keys') or key not in node:
      return None
    node = node[key]
  return node


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def errors(config) -> list[str]:
  out = []
  for knob, low in MINIMUMS.items():
    value = _get(config, knob)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= low:
      out.append(f'config.{knob}={value!r} must be >= {low}')
  for knob, (low, high) in RANGES.items():
    value = _get(config, knob)
    if _number(value) and not low <= value <= high:
      out.append(f'config.{knob}={value!r} must be in [{low}, {high}]')
  for knob, allowed in CHOICES.items():
    value = _get(config, knob)
    if value is not None and value not in allowed:
      out.append(f'config.{knob}={value!r} is not one of {allowed}')
  for knob in PAIRS:
    value = _get(config, knob)
    bad = [p for p in value or () if not (isinstance(p, (tuple, list)) and len(p) == 2)]
    if bad:
      out.append(f'config.{knob}: expected (key, value) pairs, got {bad[0]!r}')
  out += _param_group_errors(_get(config, 'optim.param_groups') or ())
  stops = _get(config, 'eval.stop_strings')
  if stops is not None and (not isinstance(stops, (tuple, list))
                            or not all(isinstance(s, str) for s in stops)):
    # --config.eval.stop_strings=5 parses to (5,): a TypeError at the first evaluation
    out.append(f"config.eval.stop_strings={stops!r}: a tuple of strings, e.g. ('###',)")
  elif '' in (stops or ()):
    out.append("config.eval.stop_strings: '' cuts every answer to nothing")
  for knob in ('optim.b1', 'optim.b2'):  # 1 divides Adam's bias correction by zero: NaN
    beta = _get(config, knob)
    if _number(beta) and not 0 <= beta < 1:
      out.append(f'config.{knob}={beta!r} must be in [0, 1)')
  lr = _get(config, 'optim.lr')
  if _number(lr) and not abs(lr) <= FLOAT32_MAX:
    out.append(f'config.optim.lr={lr!r} is not a finite float32')
  temperature, top_p = _get(config, 'eval.temperature'), _get(config, 'eval.top_p')
  if _number(temperature) and not 0 <= temperature < float('inf'):
    out.append(f'config.eval.temperature={temperature!r} must be finite and >= 0')
  if _number(top_p) and not 0 < top_p <= 1:
    out.append(f'config.eval.top_p={top_p!r} must be in (0, 1]')
  channels = _get(config, 'model.vision.num_channels')
  for knob in ('data.image_mean', 'data.image_std'):
    value = _get(config, knob)
    if isinstance(channels, int) and value is not None and len(value) not in (1, channels):
      out.append(f'config.{knob}={tuple(value)!r}: one value, or one per channel '
                 f'(config.model.vision.num_channels={channels})')
    elif value is not None and not all(_number(v) and abs(v) < float('inf') and
                                       (v > 0 or knob == 'data.image_mean') for v in value):
      out.append(f'config.{knob}={tuple(value)!r}: finite numbers'
                 + (' > 0 (pixels are divided by it)' if knob == 'data.image_std' else ''))
  # Only the codec's input honours data.resize; a VLM's or a classifier's images are always
  # squeezed square (as the exported HF processor does), so 'crop' there would be ignored.
  task, resize = _get(config, 'task'), _get(config, 'data.resize')
  if task in ('vlm', 'classify') and resize not in (None, 'square'):
    out.append(f"config.data.resize={resize!r} applies to task 'vqgan' (the codec's input) "
               f"only; task {task!r} resizes its images 'square'")
  crop = _get(config, 'data.crop_scale')
  if crop is not None and not (len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1):
    out.append(f'config.data.crop_scale={tuple(crop)!r}: (smallest, largest) area '
               'fraction kept by the random crop, 0 < smallest <= largest <= 1')
  for axis in MESH_AXES:
    value = _get(config, f'mesh.{axis}')
    if isinstance(value, int) and value != -1 and value < 1:
      out.append(f'config.mesh.{axis}={value} must be >= 1 (or -1: the remaining devices)')
  batch, accum = _get(config, 'train.batch_size'), _get(config, 'optim.grad_accum')
  derived = _get(config, 'train.micro_batch_per_device')  # grad_accum set from the mesh
  if isinstance(batch, int) and isinstance(accum, int) and batch >= 1 and accum >= 1 \
      and batch % accum and not derived:
    out.append(f'config.train.batch_size={batch} is not divisible by '
               f'config.optim.grad_accum={accum}')
  return out


def _param_group_errors(groups) -> list[str]:
  """Each (regex over parameter paths, 'frozen' or an lr multiplier >= 0) rule's faults."""
  out = []
  for i, pair in enumerate(groups):
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
      continue  # said above
    pattern, spec = pair
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      out.append(f'config.optim.param_groups[{i}]: {pattern!r} is not a regular expression '
                 f'({e})')
    if spec != 'frozen' and not (_number(spec) and 0 <= spec < float('inf')):
      out.append(f"config.optim.param_groups[{i}]: {spec!r} must be 'frozen' or a "
                 'learning-rate multiplier >= 0')
  return out


def check_keys(knob: str, spec, keys, expected: str) -> None:
  """A dict-valued knob (a mixture component, an eval dataset): a dict, of known keys."""
  if not hasattr(spec, 'items'):
    raise ValueError(f'{knob}: expected {expected}, got {spec!r}')
  for key in spec.keys():
    if key not in keys:
      raise ValueError(f'{knob}.{key}: unknown key (known: {", ".join(keys)})')


def check(config) -> None:
  """Raises ValueError naming every knob with an impossible value."""
  found = errors(config)
  if found:
    raise ValueError('; '.join(found))


def early_stopping(value) -> bool | str:
  """config.eval.early_stopping, a string 'true' / 'false' / 'never' in any case or a bool,
  as HF's True / False / 'never': generation and the export read it alike."""
  if isinstance(value, str):
    table = {'true': True, 'false': False, 'never': 'never'}
    if value.lower() not in table:
      raise ValueError(f'config.eval.early_stopping: {value!r} not in {sorted(table)}')
    return table[value.lower()]
  return bool(value)
