"""Taming Transformers VQ-GAN weights (`taming.models.vqgan.VQModel`, LLM-CXR's codec)
-> diffusers VQModel names, from a Lightning `.ckpt` (read with torch.load(weights_only=True);
a checkpoint that needs anything else unpickled is refused; Lightning's callback classes,
which such a checkpoint names beside the weights, are read as inert stand-ins, never
imported or run) or a `.safetensors` file of its state dict. The checkpoint carries no
architecture: it is read from tensor shapes (Taming's GroupNorms always have 32 groups;
the image size defaults to 256).

Taming -> diffusers: `{en,de}coder.down|up.{i}.block.{j}` -> `down_blocks.{i}|up_blocks.{L-1-i}
.resnets.{j}` (`nin_shortcut` -> `conv_shortcut`), `.attn.{j}.{norm,q,k,v,proj_out}` ->
`.attentions.{j}.{group_norm,to_q,to_k,to_v,to_out.0}` (1x1 convs -> linears),
`mid.block_1|attn_1|block_2` -> `mid_block.resnets.0|attentions.0|resnets.1`, `norm_out` ->
`conv_norm_out`, `downsample.conv` / `upsample.conv` -> `downsamplers.0.conv` /
`upsamplers.0.conv`. The training-only `loss.*` tensors (discriminator, LPIPS) are left out.
"""
import re

import numpy as np

from radjax.convert import hf_io
from radjax.convert.common import ConversionError

_ATTN = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}
TAMING_GROUPS = 32
# Taming trains with pytorch-lightning 1.0, whose checkpoints key the callbacks' states by
# the callback's class (ModelCheckpoint): read as inert stand-ins (hf_io.load_torch_file).
LIGHTNING_CALLBACKS = ('pytorch_lightning.callbacks.', 'lightning.pytorch.callbacks.')


def load_state_dict(path: str) -> dict:
  """{name: array} of a Taming `.ckpt` (Lightning: weights under 'state_dict') or
  `.safetensors`."""
  if path.endswith('.ckpt'):
    return hf_io.load_torch_file(path, LIGHTNING_CALLBACKS)
  return hf_io.load_state_dict_file(path)


def _levels(sd: dict, prefix: str) -> int:
  found = {int(m.group(1)) for k in sd for m in [re.match(rf'{prefix}\.(\d+)\.', k)] if m}
  return max(found) + 1 if found else 0


def diffusers_names(sd: dict, source: str = 'checkpoint') -> dict:
  """Taming names -> diffusers VQModel names (1x1 attention convs become linears)."""
  levels = _levels(sd, 'encoder.down')
  if not levels or 'quantize.embedding.weight' not in sd:
    raise ConversionError(f'{source}: not a Taming VQModel state dict (no encoder.down.* or '
                          'quantize.embedding.weight)')
  out = {}
  for name, x in sd.items():
    if name.startswith('loss.'):
      continue
    new = name
    new = re.sub(r'^encoder\.down\.(\d+)\.', r'encoder.down_blocks.\1.', new)
    new = re.sub(r'^decoder\.up\.(\d+)\.',
                 lambda m: f'decoder.up_blocks.{levels - 1 - int(m.group(1))}.', new)
    new = re.sub(r'\.block\.(\d+)\.', r'.resnets.\1.', new)
    new = new.replace('.nin_shortcut.', '.conv_shortcut.')
    new = re.sub(r'\.mid\.block_(\d)\.', lambda m: f'.mid_block.resnets.{int(m.group(1)) - 1}.',
                 new)
    new = new.replace('.mid.attn_1.', '.mid_block.attentions.0.')
    new = re.sub(r'\.attn\.(\d+)\.', r'.attentions.\1.', new)
    attn = re.match(r'(.*\.attentions\.\d+)\.(norm|q|k|v|proj_out)\.(weight|bias)$', new)
    if attn:
      new = f'{attn.group(1)}.{_ATTN[attn.group(2)]}.{attn.group(3)}'
      if attn.group(2) != 'norm' and attn.group(3) == 'weight':
        x = np.asarray(x).reshape(x.shape[0], x.shape[1])
    new = new.replace('.downsample.conv.', '.downsamplers.0.conv.')
    new = new.replace('.upsample.conv.', '.upsamplers.0.conv.')
    new = new.replace('.norm_out.', '.conv_norm_out.')
    out[new] = x
  return out


def diffusers_config(sd: dict, image_size: int = 256, source: str = 'checkpoint') -> dict:
  """A diffusers VQModel config (as radjax.convert.vqgan.config_from_hf reads it) from
  the shapes of a Taming state dict."""
  levels = _levels(sd, 'encoder.down')
  try:
    chans = [int(sd[f'encoder.down.{i}.block.0.conv2.weight'].shape[0]) for i in range(levels)]
    blocks = len({m.group(1) for k in sd for m in [re.match(r'encoder\.down\.0\.block\.(\d+)\.',
                                                            k)] if m})
    attn = [any(k.startswith(f'encoder.down.{i}.attn.') for k in sd) for i in range(levels)]
    codebook, dim = sd['quantize.embedding.weight'].shape
    raw = {'_class_name': 'VQModel', 'in_channels': int(sd['encoder.conv_in.weight'].shape[1]),
           'out_channels': int(sd['decoder.conv_out.weight'].shape[0]),
           'block_out_channels': chans, 'layers_per_block': blocks,
           'down_block_types': ['AttnDownEncoderBlock2D' if a else 'DownEncoderBlock2D'
                                for a in attn],
           'up_block_types': ['AttnUpDecoderBlock2D' if a else 'UpDecoderBlock2D'
                              for a in reversed(attn)],
           'latent_channels': int(sd['encoder.conv_out.weight'].shape[0]),
           'vq_embed_dim': int(dim), 'num_vq_embeddings': int(codebook),
           'norm_num_groups': TAMING_GROUPS, 'sample_size': image_size}
  except KeyError as e:
    raise ConversionError(f'{source}: Taming VQModel tensor {e} is missing') from None
  return raw
