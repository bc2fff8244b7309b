"""radjax's VQ-GAN codec <-> a diffusers `VQModel` directory (config.json +
diffusion_pytorch_model.safetensors). No torch needed on either side.

Names are one rule (radjax/models/vqgan.py mirrors diffusers): path segments `name_i`
become `name.i`, `kernel`/`scale`/`embedding` become `weight`; conv kernels go HWIO <->
OIHW and dense kernels [in, out] <-> [out, in]. The discriminator and the quantizer's
statistics are training state with no diffusers counterpart: export leaves them out,
import starts them fresh.
"""
import json
import math
import os
import re
from functools import reduce

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as st_numpy

from radjax.convert import hf_io
from radjax.convert.common import ConversionError
from radjax.models import vqgan

WEIGHTS = 'diffusion_pytorch_model.safetensors'
DIFFUSERS_VERSION = '0.42.1'  # the version the parity tests run against
_DOWN, _UP = ('DownEncoderBlock2D', 'AttnDownEncoderBlock2D'), ('UpDecoderBlock2D',
                                                                 'AttnUpDecoderBlock2D')


def hf_name(path: tuple[str, ...]) -> str:
  """('encoder', 'down_blocks_0', 'downsamplers_0_conv', 'kernel') ->
  'encoder.down_blocks.0.downsamplers.0.conv.weight'."""
  out = []
  for seg in path:
    seg = re.sub(r'^(down|up)samplers_0_conv$', r'\1samplers.0.conv', seg)
    seg = re.sub(r'^(\w+?)_(\d+)$', r'\1.\2', seg)
    out.append({'kernel': 'weight', 'scale': 'weight', 'embedding': 'embedding.weight'}.get(
        seg, seg))
  return '.'.join(out)


def _to_torch(path, x):
  x = np.asarray(x, np.float32)
  if path[-1] == 'kernel':
    return np.transpose(x, (3, 2, 0, 1)) if x.ndim == 4 else x.T
  return x


def _from_torch(path, x, want_shape):
  x = np.asarray(x, np.float32)
  if path[-1] == 'kernel':
    x = np.transpose(x, (2, 3, 1, 0)) if x.ndim == 4 else x.T
  if tuple(x.shape) != tuple(want_shape):
    raise ConversionError(f'{hf_name(path)}: shape {tuple(x.shape)} does not fit the codec '
                          f'({tuple(want_shape)} in radjax layout)')
  return x


def _exported(path) -> bool:
  return path[0] != 'discriminator' and not (path[0] == 'quantize'
                                             and path[-1] in vqgan.CODEBOOK_STATS)


def hf_config(cfg: vqgan.VQGANConfig) -> dict:
  if cfg.l2_normalize:
    raise ConversionError('config.model.vqgan.l2_normalize=True: diffusers VQModel looks codes '
                          'up by plain distance, so its codes would differ; not exportable')
  levels = len(cfg.channel_mult)
  return {
      '_class_name': 'VQModel', '_diffusers_version': DIFFUSERS_VERSION,
      'in_channels': cfg.num_channels, 'out_channels': cfg.num_channels,
      'down_block_types': [_DOWN[i in cfg.attn_levels] for i in range(levels)],
      'up_block_types': [_UP[(levels - 1 - j) in cfg.attn_levels] for j in range(levels)],
      'block_out_channels': list(cfg.block_channels), 'layers_per_block': cfg.num_res_blocks,
      'act_fn': 'silu', 'latent_channels': cfg.z_channels, 'sample_size': cfg.image_size,
      'num_vq_embeddings': cfg.codebook_size, 'norm_num_groups': cfg.norm_groups,
      'vq_embed_dim': cfg.codebook_dim, 'scaling_factor': 1.0, 'norm_type': 'group',
      'mid_block_add_attention': True, 'lookup_from_codebook': False, 'force_upcast': False,
  }


def config_from_hf(raw: dict, source: str = 'config.json', keep=None) -> vqgan.VQGANConfig:
  """A diffusers VQModel config -> VQGANConfig; what radjax's codec cannot express is an
  error naming the key. `keep` (a VQGANConfig) gives the discriminator's sizes."""
  def need(key, ok, what):
    if not ok:
      raise ConversionError(f'{source}: {key}={raw.get(key)!r}; radjax reads {what}')
  for key, want in (('act_fn', 'silu'), ('norm_type', 'group'),
                    ('mid_block_add_attention', True)):
    need(key, raw.get(key, want) == want, f'{key}={want!r} only')
  need('out_channels', raw.get('out_channels', 3) == raw.get('in_channels', 3),
       'out_channels == in_channels')
  chans = [int(c) for c in raw.get('block_out_channels', (64,))]
  downs, ups = list(raw.get('down_block_types', _DOWN[:1])), list(raw.get('up_block_types',
                                                                          _UP[:1]))
  need('down_block_types', len(downs) == len(chans) and all(t in _DOWN for t in downs),
       f'one of {_DOWN} per block_out_channels entry')
  need('up_block_types', len(ups) == len(chans) and all(t in _UP for t in ups),
       f'one of {_UP} per level')
  attn = tuple(i for i, t in enumerate(downs) if t == _DOWN[1])
  need('up_block_types', attn == tuple(len(chans) - 1 - j for j, t in enumerate(ups)
                                       if t == _UP[1])[::-1],
       'attention on the same levels as down_block_types')
  base = reduce(math.gcd, chans)
  latent = int(raw.get('latent_channels', 3))
  keep = keep or vqgan.VQGANConfig(kind='vqgan')
  return vqgan.VQGANConfig(
      kind='vqgan', num_channels=int(raw.get('in_channels', 3)),
      image_size=int(raw.get('sample_size', 32)), base_channels=base,
      channel_mult=tuple(c // base for c in chans),
      num_res_blocks=int(raw.get('layers_per_block', 1)), attn_levels=attn,
      z_channels=latent, codebook_size=int(raw.get('num_vq_embeddings', 256)),
      codebook_dim=int(raw.get('vq_embed_dim') or latent),
      norm_groups=int(raw.get('norm_num_groups', 32)), disc_channels=keep.disc_channels,
      disc_layers=keep.disc_layers)


def hf_from_params(params, cfg: vqgan.VQGANConfig) -> dict:
  """The diffusers state dict (numpy, torch layout) of a codec's params."""
  hf_config(cfg)  # refuses what diffusers cannot run
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = tuple(str(getattr(k, 'key', k)) for k in path)
    if _exported(keys):
      out[hf_name(keys)] = _to_torch(keys, x)
  return out


def params_from_hf(state_dict: dict, cfg: vqgan.VQGANConfig, seed: int = 0) -> dict:
  """Codec params from a diffusers state dict; a fresh discriminator (from `seed`) and
  fresh quantizer statistics. Every tensor must be used and every shape fit."""
  shapes = jax.eval_shape(lambda k: vqgan.VQGAN(cfg).init(
      k, jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)))['params'],
      jax.random.key(0))
  shapes = nn.meta.unbox(shapes)
  flat, used = {}, set()
  for path, want in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    keys = tuple(str(getattr(k, 'key', k)) for k in path)
    if not _exported(keys):
      continue
    name = hf_name(keys)
    if name not in state_dict:
      raise ConversionError(f'diffusers weights have no {name!r} (the config says this '
                            'tensor exists)')
    flat[keys] = _from_torch(keys, state_dict[name], want.shape)
    used.add(name)
  extra = sorted(set(state_dict) - used)
  if extra:
    raise ConversionError(f'diffusers weights have tensors the codec does not use: {extra[:8]}')
  params: dict = {}
  for keys, x in flat.items():
    node = params
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = x
  k, emb = cfg.codebook_size, params['quantize']['embedding']
  params['quantize'].update(ema_count=np.ones((k,), np.float32), ema_sum=emb.copy(),
                            usage=np.full((k,), 1.0 / k, np.float32))
  disc = jax.jit(vqgan.PatchDiscriminator(cfg).init)(
      jax.random.key(seed), jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.num_channels)))
  params['discriminator'] = jax.tree.map(np.asarray, nn.meta.unbox(disc['params']))
  return params


def load_dir(path: str) -> tuple[dict, dict]:
  """(config.json as a dict, state dict) of a diffusers VQModel directory."""
  cfg_path, weights = os.path.join(path, 'config.json'), os.path.join(path, WEIGHTS)
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path}: no such file or directory' if not os.path.exists(path)
                            else f'{path}: not a directory')
  with open(cfg_path) as f:
    try:
      raw = json.load(f)
    except ValueError as e:
      raise ConversionError(f'{cfg_path}: not JSON ({e})') from None
  if raw.get('_class_name') != 'VQModel':
    raise ConversionError(f"{cfg_path}: _class_name={raw.get('_class_name')!r}, not 'VQModel'")
  if not os.path.exists(weights):
    raise FileNotFoundError(f'{weights}: missing (a diffusers VQModel saved with safetensors)')
  return raw, hf_io.load_safetensors(weights)


def save_dir(path: str, cfg: vqgan.VQGANConfig, params, dtype=np.float32) -> None:
  """Writes a directory `diffusers.VQModel.from_pretrained` loads."""
  raw = hf_config(cfg)
  state_dict = hf_from_params(params, cfg)
  os.makedirs(path, exist_ok=True)
  st_numpy.save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in state_dict.items()},
                     os.path.join(path, WEIGHTS), metadata={'format': 'pt'})
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(raw, f, indent=1)
