"""radjax's codec <-> diffusers `VQModel` on a tiny random model with odd sizes (3 levels of
9/15/21 channels, 3 norm groups, attention on the middle level, 5 latent channels, 7-dim
codes, 37 codes, 20 px images): encode -> identical codes, decode -> pixels within 1e-4,
both directions, through `python -m radjax.convert`. (A codec trained by radjax's own step
is exported in tests/test_vqgan.py.)"""
import json
import os
import re

import jax
import numpy as np
import pytest

from radjax.convert import __main__ as convert_cli
from radjax.convert import vqgan as convert_vqgan
from radjax.core import workdir as workdir_lib
from radjax.models import factory, vqgan

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

ODD = dict(in_channels=3, out_channels=3, block_out_channels=[9, 15, 21], layers_per_block=1,
           down_block_types=['DownEncoderBlock2D', 'AttnDownEncoderBlock2D', 'DownEncoderBlock2D'],
           up_block_types=['UpDecoderBlock2D', 'AttnUpDecoderBlock2D', 'UpDecoderBlock2D'],
           latent_channels=5, vq_embed_dim=7, num_vq_embeddings=37, norm_num_groups=3,
           sample_size=20)
PIXEL_TOL = 1e-4  # f32 on both sides; the largest gap seen is ~4e-6 on outputs of size ~4


def _images(seed=0, n=2, channels=3, size=20):
  return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, channels)).astype(np.float32)


def _perturbed_hf_model(x):
  """A random VQModel whose norms are not identities and whose codebook sits among its
  latents, so that many codes are used."""
  torch.manual_seed(0)
  model = diffusers.VQModel(**ODD).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    latents = model.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents
    flat = latents.permute(0, 2, 3, 1).reshape(-1, ODD['vq_embed_dim'])
    picks = torch.randperm(flat.shape[0])[:ODD['num_vq_embeddings']]
    model.quantize.embedding.weight.copy_(flat[picks] + 0.01 * torch.randn_like(flat[picks]))
  return model


def _hf_codes_and_pixels(model, x):
  with torch.no_grad():
    h = model.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents
    codes = model.quantize(h)[2][2].reshape(x.shape[0], h.shape[2], h.shape[3]).numpy()
    pixels = model.decode(h).sample.permute(0, 2, 3, 1).numpy()
  return codes, pixels


def _ours(cfg, params, x):
  model = vqgan.VQGAN(cfg)
  codes = jax.jit(lambda p, x: model.apply({'params': p}, x, method=vqgan.VQGAN.codes))(
      params, x)
  pixels = jax.jit(lambda p, c: model.apply({'params': p}, c, method=vqgan.VQGAN.decode_codes))(
      params, codes)
  return np.asarray(codes), np.asarray(pixels)


def test_diffusers_vqmodel_imports_with_identical_codes_and_pixels(tmp_path):
  x = _images()
  hf_dir, workdir = str(tmp_path / 'hf'), str(tmp_path / 'wd')
  model = _perturbed_hf_model(x)
  model.save_pretrained(hf_dir, safe_serialization=True)
  ref_codes, ref_pixels = _hf_codes_and_pixels(model, x)
  assert len(np.unique(ref_codes)) > 10  # the comparison is not between constant maps

  assert convert_cli.main(['from-hf', '--family', 'vqgan', '--hf_dir', hf_dir,
                           '--out', workdir]) == 0
  config = workdir_lib.load_config(workdir)
  assert (config.task, config.model.kind) == ('vqgan', 'vqgan')
  cfg = factory.part_config(config.model, 'vqgan')
  assert (cfg.block_channels, cfg.attn_levels, cfg.codebook_size) == ((9, 15, 21), (1,), 37)
  params = workdir_lib.load_params(workdir)
  assert 'discriminator' in params  # fresh, so the workdir trains on
  codes, pixels = _ours(cfg, params, x)
  np.testing.assert_array_equal(codes, ref_codes)
  np.testing.assert_allclose(pixels, ref_pixels, atol=PIXEL_TOL)

  # ... and back: to-hf writes the same tensors diffusers saved.
  out = str(tmp_path / 'hf_again')
  assert convert_cli.main(['to-hf', '--workdir', workdir, '--out', out]) == 0
  again = diffusers.VQModel.from_pretrained(out).eval()
  for (name, a), (name_b, b) in zip(model.state_dict().items(), again.state_dict().items()):
    assert name == name_b
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_radjax_codec_exports_a_vqmodel_with_identical_codes_and_pixels(tmp_path):
  """A radjax-initialised grayscale codec (norm scales and biases perturbed) -> diffusers."""
  cfg = vqgan.VQGANConfig(kind='vqgan', num_channels=1, image_size=20, base_channels=3,
                          channel_mult=(3, 5, 7), num_res_blocks=1, attn_levels=(0, 2),
                          z_channels=5, codebook_size=37, codebook_dim=7, norm_groups=3,
                          disc_channels=8, disc_layers=1)
  x = _images(1, channels=1)
  model = vqgan.VQGAN(cfg)
  import flax.linen as nn
  with jax.threefry_partitionable(False):  # CPU compiles the default threefry slowly
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x)['params'])
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda p: np.asarray(p) + rng.normal(0, 0.1, p.shape).astype(np.float32),
                        params)
  z = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, method=vqgan.VQGAN.encode))(
      params, x)).reshape(-1, 7)
  params['quantize']['embedding'] = z[rng.permutation(len(z))[:37]]
  codes, pixels = _ours(cfg, params, x)
  assert len(np.unique(codes)) > 10

  out = str(tmp_path / 'hf')
  convert_vqgan.save_dir(out, cfg, params)
  with open(os.path.join(out, 'config.json')) as f:
    raw = json.load(f)
  assert raw['up_block_types'] == ['AttnUpDecoderBlock2D', 'UpDecoderBlock2D',
                                   'AttnUpDecoderBlock2D']
  hf = diffusers.VQModel.from_pretrained(out).eval()
  ref_codes, ref_pixels = _hf_codes_and_pixels(hf, x)
  np.testing.assert_array_equal(codes, ref_codes)
  np.testing.assert_allclose(pixels, ref_pixels, atol=PIXEL_TOL)
  assert convert_vqgan.config_from_hf(raw, keep=cfg) == cfg


def test_what_diffusers_cannot_run_is_refused_by_name(tmp_path):
  cfg = vqgan.VQGANConfig(kind='vqgan', l2_normalize=True)
  with pytest.raises(convert_vqgan.ConversionError, match='l2_normalize'):
    convert_vqgan.hf_config(cfg)
  raw = {**ODD, '_class_name': 'VQModel', 'norm_type': 'spatial'}
  with pytest.raises(convert_vqgan.ConversionError, match="norm_type='spatial'"):
    convert_vqgan.config_from_hf(raw)
  raw = {**ODD, 'up_block_types': ['UpDecoderBlock2D'] * 3}
  with pytest.raises(convert_vqgan.ConversionError, match='up_block_types'):
    convert_vqgan.config_from_hf(raw)
  d = tmp_path / 'not_vq'
  d.mkdir()
  (d / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL'}))
  assert convert_cli.main(['from-hf', '--family', 'vqgan', '--hf_dir', str(d),
                           '--out', str(tmp_path / 'wd')]) == 2


def _taming_names(hf_state_dict: dict, levels: int) -> dict:
  """diffusers names -> Taming's (the inverse of radjax.convert.taming), written here
  independently; diffusers' own LDM-VAE mapping checks it below."""
  out = {}
  for name, x in hf_state_dict.items():
    x = x.numpy()
    new = name.replace('down_blocks.', 'down.').replace('.resnets.', '.block.')
    new = new.replace('conv_shortcut', 'nin_shortcut').replace('conv_norm_out', 'norm_out')
    new = new.replace('.downsamplers.0.', '.downsample.').replace('.upsamplers.0.', '.upsample.')
    up = new.split('up_blocks.')
    if len(up) == 2:
      j, rest = up[1].split('.', 1)
      new = f'{up[0]}up.{levels - 1 - int(j)}.{rest}'
    new = new.replace('mid_block.block.0.', 'mid.block_1.').replace('mid_block.block.1.',
                                                                    'mid.block_2.')
    new = new.replace('mid_block.attentions.0.', 'mid.attn_1.').replace('.attentions.', '.attn.')
    for ours, theirs in (('group_norm', 'norm'), ('to_q', 'q'), ('to_k', 'k'), ('to_v', 'v'),
                         ('to_out.0', 'proj_out')):
      if f'.{ours}.' in new:
        new = new.replace(f'.{ours}.', f'.{theirs}.')
        if theirs != 'norm' and x.ndim == 2:
          x = x[:, :, None, None]  # Taming's attention projections are 1x1 convs
    out[new] = x
  return out


# A Taming-shaped VQModel (32 norm groups, as every Taming model has), 2 levels.
TAMING_LIKE = dict(in_channels=3, out_channels=3, block_out_channels=[32, 64],
                   layers_per_block=1,
                   down_block_types=['DownEncoderBlock2D', 'AttnDownEncoderBlock2D'],
                   up_block_types=['AttnUpDecoderBlock2D', 'UpDecoderBlock2D'],
                   latent_channels=5, vq_embed_dim=7, num_vq_embeddings=37, norm_num_groups=32,
                   sample_size=256)


def test_taming_checkpoint_imports_safely_with_identical_codes_and_pixels(tmp_path, capsys):
  from diffusers.loaders import single_file_utils
  cfg = TAMING_LIKE
  x = _images(3, n=1, size=16)
  torch.manual_seed(1)
  hf = diffusers.VQModel(**cfg).eval()
  with torch.no_grad():
    for p in hf.parameters():
      p.add_(0.1 * torch.randn_like(p))
    h = hf.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents.permute(0, 2, 3, 1)
    hf.quantize.embedding.weight.copy_(h.reshape(-1, 7)[torch.randperm(64)[:37]])
  taming_sd = _taming_names(hf.state_dict(), levels=2)
  # diffusers' LDM mapping agrees on every tensor it knows (all but level attention).
  reference = single_file_utils.convert_ldm_vae_checkpoint(
      {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in taming_sd.items()}, cfg)
  hf_sd = hf.state_dict()
  assert len(reference) > 30
  checked = 0
  for name, t in reference.items():
    if '.attn.' in name:  # level attention: passed through unmapped by diffusers' LDM code
      continue
    np.testing.assert_array_equal(t.reshape(hf_sd[name].shape).numpy(), hf_sd[name].numpy())
    checked += 1
  assert checked == len([k for k in hf_sd if not re.search(r'(down|up)_blocks\.\d+\.attentions', k)
                         and not k.startswith('quantize.')])
  # A Lightning checkpoint: weights under 'state_dict' plus a training-only loss network.
  ckpt = str(tmp_path / 'last.ckpt')
  torch.save({'state_dict': {**{k: torch.from_numpy(np.ascontiguousarray(v))
                                for k, v in taming_sd.items()},
                             'loss.discriminator.main.0.weight': torch.zeros(2, 3, 4, 4)},
              'global_step': 7}, ckpt)
  workdir = str(tmp_path / 'wd')
  assert convert_cli.main(['from-hf', '--family', 'vqgan', '--hf_dir', ckpt,
                           '--out', workdir]) == 0
  config = workdir_lib.load_config(workdir)
  ours = _ours(factory.part_config(config.model, 'vqgan'), workdir_lib.load_params(workdir), x)
  ref_codes, ref_pixels = _hf_codes_and_pixels(hf, x)
  assert len(np.unique(ref_codes)) > 5
  np.testing.assert_array_equal(ours[0], ref_codes)
  np.testing.assert_allclose(ours[1], ref_pixels, atol=PIXEL_TOL)
  # A checkpoint that needs arbitrary unpickling (here hparams as an argparse.Namespace)
  # is refused, not executed.
  import argparse
  bad = str(tmp_path / 'bad.ckpt')
  torch.save({'state_dict': {}, 'hyper_parameters': argparse.Namespace(lr=1.0)}, bad)
  assert convert_cli.main(['from-hf', '--family', 'vqgan', '--hf_dir', bad,
                           '--out', str(tmp_path / 'wd2')]) == 2
  assert 'refused' in capsys.readouterr().err


def test_a_taming_checkpoint_encodes_images_as_llm_cxr_does(tmp_path):
  """LLM-CXR's encode_cxr_all.py takes the shorter side to 256 and the centre square
  before its Taming codec: the imported codec (its Codec, encode_codes) must read a
  non-square radiograph so, not squeeze it to a square."""
  from PIL import Image
  from safetensors import numpy as st_numpy

  from radjax.convert import export
  from radjax.data import image_files
  from radjax.data import images as images_lib
  from radjax.eval import llm_cxr
  hf = diffusers.VQModel(**{**TAMING_LIKE, 'vq_embed_dim': 4, 'num_vq_embeddings': 8})
  ckpt = str(tmp_path / 'codec.safetensors')
  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in
                      _taming_names(hf.state_dict(), levels=2).items()}, ckpt)
  config, params = export.import_vqgan(ckpt)
  workdir = str(tmp_path / 'wd')
  workdir_lib.save_params(workdir, config, params)
  codec = llm_cxr.Codec(workdir)
  png = str(tmp_path / 'tall.png')
  ramp = np.linspace(0, 255, 400 * 300).reshape(400, 300).astype(np.uint8)
  Image.fromarray(np.stack([ramp] * 3, -1)).save(png)
  crop = images_lib.preprocess(image_files.read_entry(png), size=256, num_channels=3,
                               mean=(0.5,) * 3, std=(0.5,) * 3, record_id='tall',
                               resize='crop')
  np.testing.assert_array_equal(codec.load_image(png), crop)


def test_a_lightning_1_0_checkpoint_with_its_callback_class_key_imports(tmp_path, monkeypatch):
  """Taming's main.py (pytorch-lightning 1.0, LLM-CXR's taming env) keys the callbacks'
  states by their class: every such .ckpt names pytorch_lightning's ModelCheckpoint, which
  torch.load(weights_only=True) refuses. Read with an inert stand-in for that class (never
  imported or run), the weights import; any other class is still refused."""
  import sys
  import types

  from radjax.convert import taming
  fake = {name: types.ModuleType(name) for name in (
      'pytorch_lightning', 'pytorch_lightning.callbacks',
      'pytorch_lightning.callbacks.model_checkpoint')}
  callback = type('ModelCheckpoint', (), {'__module__':
                                          'pytorch_lightning.callbacks.model_checkpoint'})
  fake['pytorch_lightning.callbacks.model_checkpoint'].ModelCheckpoint = callback
  hf = diffusers.VQModel(**{**TAMING_LIKE, 'vq_embed_dim': 4, 'num_vq_embeddings': 8})
  sd = {k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in _taming_names(hf.state_dict(), levels=2).items()}
  ckpt = str(tmp_path / 'last.ckpt')
  with monkeypatch.context() as m:  # the class exists only while the file is written
    for name, module in fake.items():
      m.setitem(sys.modules, name, module)
    torch.save({'epoch': 3, 'global_step': 9, 'state_dict': sd,
                'callbacks': {callback: {'best_model_score': torch.tensor(0.5),
                                         'best_model_path': 'logs/x.ckpt'}}}, ckpt)
  assert 'pytorch_lightning' not in sys.modules or sys.modules['pytorch_lightning'] is not \
      fake['pytorch_lightning']
  loaded = taming.load_state_dict(ckpt)
  assert sorted(loaded) == sorted(sd)
  np.testing.assert_array_equal(loaded['quantize.embedding.weight'],
                                sd['quantize.embedding.weight'].numpy())
  assert convert_cli.main(['from-hf', '--family', 'vqgan', '--hf_dir', ckpt,
                           '--out', str(tmp_path / 'wd')]) == 0
