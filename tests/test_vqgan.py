"""The VQ-GAN codec (radjax/models/vqgan.py) and its task (radjax/tasks/vqgan.py): LLM-CXR's
geometry, the quantizer, EMA / restarts, the adaptive GAN weight against plain autodiff,
LPIPS from user weights, and configs/vqgan.py at size=micro through the generic trainer
(losses fall, a killed run resumes identically)."""
import copy
import functools
import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import vqgan as vqgan_recipe
from radjax import run as run_lib
from radjax.core import sharding
from radjax.core import workdir as workdir_lib
from radjax.data import pixels as pixels_lib
from radjax.models import factory, lpips, vqgan
from radjax.tasks import vqgan as vqgan_task
from radjax.train import state as state_lib
from tests.conftest import train_killed_then_resumed


def micro_config(demo_data, steps=8):
  c = vqgan_recipe.get_config('size=micro')
  c.data.dir = demo_data
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = steps, 4, steps
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 1
  return c


def test_full_geometry_is_llm_cxrs_16x16_codes_from_1024():
  c = vqgan_recipe.get_config('')
  cfg = factory.part_config(c.model, 'vqgan')
  assert (cfg.codebook_size, cfg.code_grid, cfg.image_size) == (1024, (16, 16), 256)
  model = vqgan.VQGAN(cfg)
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  codes = jax.eval_shape(lambda v, x: model.apply(v, x, method=vqgan.VQGAN.codes), variables, x)
  assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
  images = jax.eval_shape(lambda v, c: model.apply(v, c, method=vqgan.VQGAN.decode_codes),
                          variables, codes)
  assert images.shape == (2, 256, 256, 3)


def test_the_codec_task_needs_no_tokenizer(tmp_path):
  """Images in, images out: a dataset without tokenizer.json trains a codec."""
  c = vqgan_recipe.get_config('size=micro')
  c.data.dir = str(tmp_path)
  task = run_lib.make_task(c)
  assert isinstance(task, vqgan_task.ImageCodec) and task.tokenizer is None


def test_the_codec_refuses_micro_batches_also_derived_from_the_mesh(tmp_path):
  """The codec's step takes its batch whole: optim.grad_accum > 1 is an error, also when
  train.micro_batch_per_device derives it from the mesh after the task was made (the
  step then ran the whole batch on each device's share, the knob silently ignored)."""
  from radjax.train import setup
  c = micro_config(str(tmp_path))
  c.train.micro_batch_per_device = 1  # a batch of 8 over 4 devices: 2 micro-batches
  with pytest.raises(ValueError, match=r'grad_accum=2 \(derived from config\.train\.'
                     r'micro_batch_per_device=1\): the vqgan task takes one batch per step'):
    setup.build(c, run_lib.make_task(c), jax.devices()[:4])
  c.train.micro_batch_per_device, c.optim.grad_accum = 0, 2
  with pytest.raises(ValueError, match=r'grad_accum=2: the vqgan task takes one batch'):
    setup.build(c, run_lib.make_task(c), jax.devices()[:1])


def test_bad_geometry_is_an_error_naming_the_knob():
  with pytest.raises(ValueError, match='norm_groups'):
    vqgan.VQGANConfig(kind='vqgan', base_channels=12, norm_groups=8)
  with pytest.raises(ValueError, match='image_size=100'):
    vqgan.VQGANConfig(kind='vqgan', image_size=100)


def test_remat_knob_rematerialises_the_codec_blocks_with_the_same_gradients():
  """config.runtime.remat.vqgan reaches the codec: its blocks are recomputed in the
  backward pass (a remat in the gradient's jaxpr), same parameters and gradients."""
  c = vqgan_recipe.get_config('size=micro')
  cfg = factory.part_config(c.model, 'vqgan')
  x = jax.random.uniform(jax.random.key(1), (2, cfg.image_size, cfg.image_size,
                                             cfg.num_channels), minval=-1.0, maxval=1.0)

  def model_for(policy):
    c.runtime.remat.vqgan = policy
    return vqgan.VQGAN(cfg, factory.runtime(c, 'vqgan'))

  plain, remat = model_for('none'), model_for('full')
  # Jitted init and gradients: op by op, the codec's convolutions took most of a minute.
  params = jax.jit(plain.init)(jax.random.key(0), x)['params']
  assert (jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x)['params'])
          == jax.tree.structure(params))
  grad = lambda m: jax.grad(lambda p: jnp.mean(jnp.square(m.apply({'params': p}, x)[0] - x)))
  assert 'remat' not in str(jax.make_jaxpr(grad(plain))(params))
  assert 'remat' in str(jax.make_jaxpr(grad(remat))(params))
  got = [jax.jit(grad(m))(params) for m in (plain, remat)]
  for a, b in zip(*(jax.tree.leaves(g) for g in got)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_quantizer_picks_nearest_code_and_passes_gradients_straight_through():
  cfg = vqgan.VQGANConfig(kind='vqgan', codebook_size=11, codebook_dim=3)
  q = vqgan.Quantizer(cfg)
  z = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  params = q.init(jax.random.key(0), z)['params']
  params = {**nn.meta.unbox(params), 'embedding': np.asarray(
      jax.random.normal(jax.random.key(2), (11, 3)))}
  zq, codes, _ = q.apply({'params': params}, z)
  brute = np.argmin(((np.asarray(z)[..., None, :] - params['embedding']) ** 2).sum(-1), -1)
  np.testing.assert_array_equal(codes, brute)
  np.testing.assert_allclose(zq, params['embedding'][brute], atol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(q.apply({'params': params}, z)[0] * 3.0))(z)
  np.testing.assert_allclose(grad, 3.0, atol=1e-6)  # identity through the lookup


def _vc(**kw):
  base = dict(ema=False, ema_decay=0.5, restart_every=0, restart_threshold=0.6, usage_decay=0.5)
  return ml_collections.ConfigDict({**base, **kw})


def test_ema_moves_codes_to_their_assigned_mean_and_dead_codes_restart():
  cfg = vqgan.VQGANConfig(kind='vqgan', codebook_size=4, codebook_dim=2)
  emb = np.array([[0., 0.], [10., 10.], [20., 20.], [30., 30.]], np.float32)
  q = {'embedding': emb, 'ema_count': np.ones(4, np.float32), 'ema_sum': emb.copy(),
       'usage': np.full(4, 0.25, np.float32)}
  z = np.array([[1., 1.], [3., 3.], [11., 11.]], np.float32)
  codes = np.array([0, 0, 1], np.int32)
  out, m = vqgan_task.codebook_update(q, z, codes, _vc(ema=True), cfg, 0, jax.random.key(0))
  # count 0.5*1 + 0.5*2 = 1.5, sum 0.5*0 + 0.5*4 = 2 -> 1.333 (up to Laplace smoothing)
  np.testing.assert_allclose(out['embedding'][0], [2 / 1.5] * 2, rtol=1e-4)
  np.testing.assert_allclose(out['embedding'][3], emb[3], rtol=1e-4)  # unused: unchanged
  assert float(m['codes_used']) == 0.5
  # Restarts: codes 2 and 3 were never used -> replaced by encoder outputs of the batch.
  out, _ = vqgan_task.codebook_update(q, z, codes, _vc(restart_every=1), cfg, 0,
                                      jax.random.key(0))
  np.testing.assert_array_equal(out['embedding'][:2], emb[:2])
  for row in np.asarray(out['embedding'][2:]):
    assert any(np.array_equal(row, zi) for zi in z)


def test_lpips_is_zero_on_identical_images_and_reads_a_vgg_state_dict(tmp_path):
  from safetensors import numpy as st_numpy
  rng = np.random.default_rng(0)
  widths = (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  sd = {}
  for n, i in enumerate(lpips.VGG16_CONVS):
    sd[f'features.{i}.weight'] = rng.normal(0, 0.05, (widths[n + 1], widths[n], 3, 3)).astype(
        np.float32)
    sd[f'features.{i}.bias'] = np.zeros(widths[n + 1], np.float32)
  path = str(tmp_path / 'vgg16.safetensors')
  st_numpy.save_file(sd, path)
  vc = ml_collections.ConfigDict(dict(perceptual_weights=path, perceptual_weight=1.0,
                                      lpips_heads=''))
  weights = vqgan_task.load_perceptual(vc)
  x = jnp.asarray(rng.uniform(-1, 1, (2, 32, 32, 1)), jnp.float32)
  same = lpips.distance(x, x, weights)
  other = lpips.distance(x, x[::-1], weights)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  assert float(other[0]) > 1e-3
  with pytest.raises(ValueError, match='not a torchvision vgg16'):
    lpips.weights_from_state_dict({}, None, 'x.pth')
  assert vqgan_task.load_perceptual(ml_collections.ConfigDict(
      dict(perceptual_weights='', perceptual_weight=1.0))) is None


def _torch_lpips(a, b, sd, heads=None):
  """LPIPS written here in torch from richzhang/PerceptualSimilarity's forward (lpips/
  lpips.py, v0.1): ScalingLayer; torchvision's vgg16.features (config 'D') cut after
  relu1_2 .. relu5_3 (pretrained_networks.py: slices end at 4, 9, 16, 23, 30);
  normalize_tensor (f / (|f| + 1e-10)); squared differences; channels summed
  (lpips=False) or weighed by the 1x1 heads; spatial mean; summed over the layers."""
  import torch
  layers, c = [], 3
  for v in (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512):
    if v == 'M':
      layers.append(torch.nn.MaxPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(c, v, 3, padding=1), torch.nn.ReLU()]
      c = v
  features = torch.nn.Sequential(*layers)
  features.load_state_dict({k.removeprefix('features.'): torch.from_numpy(v)
                            for k, v in sd.items()})
  shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
  scale = torch.tensor([.458, .448, .450])[None, :, None, None]

  def taps(x):
    x, out = (torch.from_numpy(x).permute(0, 3, 1, 2) - shift) / scale, []
    for lo, hi in ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)):
      x = features[lo:hi](x)
      out.append(x)
    return out

  total = 0
  with torch.no_grad():
    for k, (f0, f1) in enumerate(zip(taps(a), taps(b))):
      n0 = f0 / (torch.sqrt(torch.sum(f0 ** 2, dim=1, keepdim=True)) + 1e-10)
      n1 = f1 / (torch.sqrt(torch.sum(f1 ** 2, dim=1, keepdim=True)) + 1e-10)
      diff = (n0 - n1) ** 2
      if heads is None:
        layer = diff.sum(dim=1, keepdim=True)
      else:
        layer = torch.nn.functional.conv2d(diff, torch.from_numpy(heads[f'lin{k}.model.1.weight']))
      total = total + layer.mean([2, 3], keepdim=True)
  return total.reshape(-1).numpy()


def test_lpips_matches_a_torch_lpips_with_and_without_heads():
  rng = np.random.default_rng(1)
  widths = (3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  sd = {}
  for n, i in enumerate(lpips.VGG16_CONVS):  # He-scaled, so relu5_3 is not all zero
    fan_in = widths[n] * 9
    sd[f'features.{i}.weight'] = rng.normal(0, np.sqrt(2 / fan_in), (
        widths[n + 1], widths[n], 3, 3)).astype(np.float32)
    sd[f'features.{i}.bias'] = rng.normal(0, 0.01, widths[n + 1]).astype(np.float32)
  heads = {f'lin{k}.model.1.weight': rng.uniform(0, 0.1, (1, c, 1, 1)).astype(np.float32)
           for k, c in enumerate((64, 128, 256, 512, 512))}
  a = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1).astype(np.float32)
  for h in (None, heads):
    ours = np.asarray(lpips.distance(jnp.asarray(a), jnp.asarray(b),
                                     lpips.weights_from_state_dict(sd, h, 'vgg16')))
    np.testing.assert_allclose(ours, _torch_lpips(a, b, sd, h), rtol=2e-5)
  gray = a[..., :1]  # grayscale is read as the same value in all three channels
  np.testing.assert_allclose(
      np.asarray(lpips.distance(jnp.asarray(gray), jnp.asarray(b[..., :1]),
                                lpips.weights_from_state_dict(sd, None, 'vgg16'))),
      _torch_lpips(np.repeat(gray, 3, -1), np.repeat(b[..., :1], 3, -1), sd), rtol=2e-5)


@pytest.fixture(scope='module')
def stepped(demo_data):
  """The micro codec's jitted train step (adversarial terms on from step 0) and the states
  of 6 steps on one batch of demo images."""
  from radjax.data import pipeline
  from radjax.train import setup
  c = micro_config(demo_data)
  c.vqgan.disc_start = 0
  c.optim.clip_norm = 0.0
  task = run_lib.make_task(c)
  # XLA on CPU compiles partitionable threefry slowly (~6 s per random op); the values
  # drawn do not matter here.
  with jax.threefry_partitionable(False):
    exp = setup.build(c, task)
    ds = pipeline.eval_dataset(c, task.processor(), 'train', c.train.batch_size)
    batch = pipeline.to_global(ds[0], exp.batch_shardings)
    step = setup.jit_train_step(exp)
    first = jax.device_get(exp.state)  # the step donates its input state
    states, metrics, state = [first], [], exp.state
    for _ in range(6):
      state, m = step(state, batch)
      states.append(jax.device_get(state))
      metrics.append(jax.device_get(m))
  return c, exp, batch, states, metrics


def test_train_step_reconstruction_improves_with_both_optimizers(stepped):
  _, _, _, states, metrics = stepped
  rec = [float(m['rec_loss']) for m in metrics]
  assert rec[-1] < 0.8 * rec[0], rec
  assert all(float(m['d_loss']) > 0 and float(m['disc_grad_norm']) > 0 for m in metrics)
  before, after = states[0].params, states[-1].params
  for part in ('encoder', 'decoder', 'discriminator'):
    assert not np.allclose(before[part]['conv_out']['kernel'], after[part]['conv_out']['kernel'])
  assert set(states[-1].opt_state) == {'generator', 'discriminator'}


def test_train_step_gradients_equal_plain_autodiff_with_the_adaptive_weight(stepped):
  """The step's vjp split at the decoder's last conv gives the same generator gradient as
  differentiating rec + vq + lambda * gan directly, lambda from separate gradients."""
  c, exp, batch, states, metrics = stepped
  task, model, params = exp.task, exp.model, states[0].params
  x = np.array(pixels_lib.as_floats(batch)['images'])  # 8-bit + tables -> the codec's input
  gen = {k: v for k, v in params.items() if k != 'discriminator'}

  @jax.jit
  def reference(gen):
    def parts(g):
      recon, aux = model.apply({'params': {**g, 'discriminator': params['discriminator']}}, x)
      rec = jnp.mean(jnp.abs(recon - x))
      gan = -jnp.mean(model.apply({'params': params}, recon, method=vqgan.VQGAN.discriminate))
      return rec, gan, task._vq_loss(aux)
    grad_rec = jax.grad(lambda g: parts(g)[0])(gen)['decoder']['conv_out']['kernel']
    grad_gan = jax.grad(lambda g: parts(g)[1])(gen)['decoder']['conv_out']['kernel']
    weight = c.vqgan.disc_weight * jnp.linalg.norm(grad_rec) / (jnp.linalg.norm(grad_gan) + 1e-4)
    total = jax.grad(lambda g: parts(g)[0] + parts(g)[2] + weight * parts(g)[1])(gen)
    return weight, optax.tree.norm(total)

  weight, norm = reference(gen)
  np.testing.assert_allclose(metrics[0]['gan_weight'], weight, rtol=1e-4)
  np.testing.assert_allclose(metrics[0]['grad_norm'], norm, rtol=1e-4)


def _fsdp8(c):
  """A copy of config `c` on a data=1 x fsdp=8 mesh."""
  c = copy.deepcopy(c)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 8, 1
  return c


def _bytes(leaves, per_device: bool = False) -> int:
  """Bytes of abstract (sharded) arrays, whole or as one device holds them."""
  shape = lambda a: a.sharding.shard_shape(a.shape) if per_device else a.shape
  return sum(math.prod(shape(a)) * a.dtype.itemsize for a in leaves)


@pytest.mark.parametrize('size', ['', 'size=tiny'])
def test_fsdp_shards_the_codec_kernels_and_codebook_over_eight_devices(size):
  """Every conv / attention kernel and the codebook names a logical axis the default rules
  put on fsdp: on 8 devices each holds about an eighth of the parameters (all 8 of them
  whole before), and nothing adds up to the replicated-parameter warning."""
  c = _fsdp8(vqgan_recipe.get_config(size))
  task = vqgan_task.ImageCodec(c, None)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:8])
  rules = sharding.rules_from_config(c.sharding.rules)
  params, shardings = state_lib.abstract_params(task.model(), task.init_inputs(), mesh, rules)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  for path, a in flat:
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    if name.endswith(('kernel', 'embedding', 'ema_sum')):
      assert a.sharding.shard_shape(a.shape) != a.shape, name
  spec = lambda *keys: tuple(functools.reduce(lambda t, k: t[k], keys, params).sharding.spec)
  assert spec('encoder', 'conv_in', 'kernel') == (None, None, None, 'fsdp')  # 1-3 channels in
  assert spec('decoder', 'up_blocks_0', 'resnets_0', 'conv1', 'kernel') == (
      None, None, 'fsdp', None)
  assert spec('quantize', 'embedding') == ('tensor', 'fsdp')  # as an LLM's embedding table
  total, leaves = _bytes(jax.tree.leaves(params)), jax.tree.leaves(params)
  assert _bytes(leaves, per_device=True) <= 1.1 * total / 8 + 32 * 1024
  assert sharding.warn_replicated(params, shardings, c.sharding.replicated_warn_mib) == []


def test_train_steps_on_an_fsdp_mesh_equal_one_device(stepped):
  """The micro codec born sharded over 8 devices (fsdp) starts from the one-device init,
  and its train steps (adversarial terms on) give the one-device losses and params."""
  from radjax.data import pipeline
  from radjax.train import setup
  c, _, batch, states, metrics = stepped
  c = _fsdp8(c)
  with jax.threefry_partitionable(False):  # as `stepped` was initialised
    exp = setup.build(c, run_lib.make_task(c), jax.devices()[:8])
    state = exp.state
    kernel = state.params['decoder']['mid_block']['resnets_0']['conv1']['kernel']
    assert kernel.addressable_shards[0].data.shape[2] == kernel.shape[2] // 8
    dev = jax.devices()[0]
    held = sum(s.data.nbytes for a in jax.tree.leaves(state.params)
               for s in a.addressable_shards if s.device == dev)
    assert held < 0.2 * _bytes(jax.tree.leaves(state.params))  # micro: 1/8 + biases, norms
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
                 jax.device_get(state.params), states[0].params)
    step = setup.jit_train_step(exp)
    sharded = pipeline.to_global({k: np.asarray(v) for k, v in batch.items()},
                                 exp.batch_shardings)
    for i in range(2):
      state, m = step(state, sharded)
      for key in ('loss', 'rec_loss', 'g_loss', 'd_loss', 'grad_norm'):
        np.testing.assert_allclose(m[key], metrics[i][key], rtol=1e-5, err_msg=key)
  # atol: a bias a GroupNorm cancels has an exact gradient of 0, so float noise (|g| ~
  # 1e-11) moves it by ~lr |g| / eps ~ 1e-6 a step, either way (on an Intel CPU's kernels
  # the sign differs between layouts); trained leaves move by ~lr = 1e-3.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               jax.device_get(state.params), states[2].params)


def test_trained_codec_exports_to_diffusers_with_the_same_codes_and_pixels(stepped, tmp_path):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  from radjax.convert import __main__ as convert_cli
  c, exp, batch, states, _ = stepped
  workdir, out = str(tmp_path / 'trained'), str(tmp_path / 'hf')
  workdir_lib.save_params(workdir, c, states[-1].params)
  assert convert_cli.main(['to-hf', '--workdir', workdir, '--out', out]) == 0
  hf = diffusers.VQModel.from_pretrained(out).eval()
  x = np.array(pixels_lib.as_floats(batch)['images'])  # 8-bit + tables -> the codec's input
  model, params = exp.model, states[-1].params
  codes = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x,
                                                      method=vqgan.VQGAN.codes))(params, x))
  pixels = np.asarray(jax.jit(lambda p, c: model.apply({'params': p}, c,
                                                       method=vqgan.VQGAN.decode_codes))(
      params, codes))
  with torch.no_grad():
    h = hf.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latents
    ref_codes = hf.quantize(h)[2][2].reshape(codes.shape).numpy()
    ref_pixels = hf.decode(h).sample.permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_equal(codes, ref_codes)
  assert len(np.unique(codes)) > 1
  np.testing.assert_allclose(pixels, ref_pixels, atol=1e-4)


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['train/rec_loss'] for r in map(json.loads, f) if 'train/rec_loss' in r}


@pytest.fixture(scope='module')
def trained(demo_data, tmp_path_factory):
  config = micro_config(demo_data)
  workdir = str(tmp_path_factory.mktemp('vqgan') / 'full')
  metrics = run_lib.main(config, workdir, 'train')
  return config, workdir, metrics


@pytest.mark.slow
def test_micro_codec_trains_through_the_generic_loop(trained):
  config, workdir, metrics = trained
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, 9))
  assert losses[8] < 0.8 * losses[1]
  for key in ('eval/psnr', 'eval/ssim', 'eval/codes_used', 'eval/perplexity'):
    assert np.isfinite(metrics[key]), key
  assert 0 < metrics['eval/codes_used'] <= 1 and metrics['eval/perplexity'] >= 1
  saved = workdir_lib.load_config(workdir)
  assert (saved.task, saved.model.kind) == ('vqgan', 'vqgan')
  params = workdir_lib.load_params(workdir)
  assert set(params) == {'encoder', 'quant_conv', 'quantize', 'post_quant_conv', 'decoder',
                         'discriminator'}


@pytest.mark.slow
def test_micro_codec_killed_run_resumes_identically(trained, tmp_path, monkeypatch):
  config, workdir, _ = trained
  cut = str(tmp_path / 'cut')
  train_killed_then_resumed(config, cut, monkeypatch, kill_at_batch=6)
  assert _losses(cut) == _losses(workdir)


@pytest.mark.parametrize('ema, per_image', [(False, 0.5 * 2.0 + 0.25 * 4.0), (True, 0.25 * 4.0)])
def test_held_out_loss_weighs_the_codebook_terms_as_training_does(ema, per_image):
  c = vqgan_recipe.get_config('size=micro')
  c.vqgan.codebook_weight, c.vqgan.beta, c.vqgan.ema = 0.5, 0.25, ema
  task = vqgan_task.ImageCodec(c, None)

  class Model:  # a perfect reconstruction with fixed quantizer losses
    def apply(self, variables, x):
      del variables
      n = x.shape[0]
      return x, {'codebook_loss': jnp.full((n, 4, 4), 2.0),
                 'commit_loss': jnp.full((n, 4, 4), 4.0), 'codes': jnp.zeros((n, 4, 4), int)}

  x = jnp.zeros((2, 32, 32, 1))
  sums = task.loss(Model(), {}, {'images': x}, None)
  aux = Model().apply(None, x)[1]
  np.testing.assert_allclose(sums['loss_sum'], 2 * per_image)
  np.testing.assert_allclose(task._vq_loss(aux), per_image)  # the train step's term


def test_codebook_usage_and_the_logged_grid():
  from radjax.eval.evaluators import codec
  u = codec.usage_stats(np.array([2, 2, 0, 0]))
  assert u['codes_used'] == 0.5 and u['perplexity'] == pytest.approx(2.0)
  u = codec.usage_stats(np.array([3, 1, 0, 0, 0, 0, 0, 0]))
  assert u['codes_used'] == 0.25
  entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert u['perplexity'] == pytest.approx(math.exp(entropy))
  assert codec.usage_stats(np.zeros(4)) == {'codes_used': 0.0, 'perplexity': 1.0}
  inputs, recons = -np.ones((2, 3, 4, 1)), np.ones((2, 3, 4, 1))
  grid = codec.side_by_side(inputs, recons)  # each row: input | reconstruction
  assert grid.shape == (1, 6, 8, 1)
  np.testing.assert_array_equal(grid[0, :, :4], 0.0)
  np.testing.assert_array_equal(grid[0, :, 4:], 1.0)


def test_ema_and_usage_keep_decay_of_the_old_value_and_restarts_wait_for_their_step():
  """ema_decay / usage_decay weigh the running value (0.5 in the test above hides which
  side they weigh); restarts come every restart_every-th step (step + 1), reset the EMA of
  the codes they replace, and (l2_normalize) average normalised encoder outputs."""
  cfg = vqgan.VQGANConfig(kind='vqgan', codebook_size=4, codebook_dim=2)
  emb = np.array([[0., 0.], [10., 10.], [20., 20.], [30., 30.]], np.float32)
  q = {'embedding': emb, 'ema_count': np.full(4, 2.0, np.float32), 'ema_sum': 2 * emb,
       'usage': np.full(4, 0.25, np.float32)}
  z = np.array([[1., 1.], [3., 3.], [11., 11.]], np.float32)
  codes = np.array([0, 0, 1], np.int32)
  vc = _vc(ema=True, ema_decay=0.9, usage_decay=0.8)
  out, _ = vqgan_task.codebook_update(q, z, codes, vc, cfg, 0, jax.random.key(0))
  np.testing.assert_allclose(out['ema_count'], [0.9 * 2 + 0.1 * 2, 0.9 * 2 + 0.1 * 1, 1.8, 1.8],
                             rtol=1e-6)
  np.testing.assert_allclose(out['ema_sum'][:2], [[0.4, 0.4], [0.9 * 20 + 1.1] * 2], rtol=1e-6)
  np.testing.assert_allclose(out['embedding'][1], [(0.9 * 20 + 1.1) / 1.9] * 2, rtol=1e-4)
  np.testing.assert_allclose(out['usage'], 0.8 * 0.25 + 0.2 * np.array([2 / 3, 1 / 3, 0, 0]),
                             rtol=1e-6)
  # restart_every=2: step 0 is not a restart step, step 1 is (codes 2 and 3 are dead).
  vc = _vc(ema=True, ema_decay=0.9, restart_every=2)
  out, _ = vqgan_task.codebook_update(q, z, codes, vc, cfg, 0, jax.random.key(0))
  np.testing.assert_allclose(out['embedding'][2:], emb[2:], rtol=1e-4)
  out, _ = vqgan_task.codebook_update(q, z, codes, vc, cfg, 1, jax.random.key(0))
  for row in np.asarray(out['embedding'][2:]):
    assert any(np.array_equal(row, zi) for zi in z)
  np.testing.assert_array_equal(out['ema_sum'][2:], out['embedding'][2:])
  np.testing.assert_array_equal(out['ema_count'][2:], [1.0, 1.0])  # the EMA starts afresh
  np.testing.assert_array_equal(out['usage'][2:], [0.25, 0.25])
  # Cosine codes: the EMA sums unit vectors.
  cos = vqgan.VQGANConfig(kind='vqgan', codebook_size=4, codebook_dim=2, l2_normalize=True)
  zz = np.array([[3., 4.]], np.float32)
  out, _ = vqgan_task.codebook_update(q, zz, np.array([0], np.int32), _vc(ema=True), cos, 0,
                                      jax.random.key(0))
  np.testing.assert_allclose(out['ema_sum'][0], [0.3, 0.4], rtol=1e-6)


def test_reconstruction_loss_weighs_l1_l2_and_the_perceptual_term_by_their_knobs(monkeypatch):
  c = vqgan_recipe.get_config('size=micro')
  c.vqgan.l1_weight, c.vqgan.l2_weight, c.vqgan.perceptual_weight = 2.0, 0.5, 0.3
  task = vqgan_task.ImageCodec(c, None)
  task._perceptual, task._perceptual_loaded = {'vgg': 'stand-in'}, True
  monkeypatch.setattr(lpips, 'distance', lambda x, y, w: jnp.full((x.shape[0],), 2.0))
  x, y = jnp.zeros((2, 8, 8, 1)), jnp.full((2, 8, 8, 1), 0.5)
  np.testing.assert_allclose(task._rec_loss(x, y), [2.0 * 0.5 + 0.5 * 0.25 + 0.3 * 2.0] * 2,
                             rtol=1e-6)


def test_step_metrics_are_the_hinge_loss_and_the_weighted_generator_loss(stepped):
  """d_loss is Taming's hinge on the discriminator's logits of real and reconstructed
  images (at the step's starting params), and 'loss' sums the generator's weighted terms."""
  c, exp, batch, states, metrics = stepped
  model, params, m = exp.model, states[0].params, metrics[0]
  x = np.array(pixels_lib.as_floats(batch)['images'])
  recon = jax.jit(lambda p: model.apply({'params': p}, x)[0])(params)
  disc = jax.jit(lambda p, img: model.apply({'params': p}, img,
                                            method=vqgan.VQGAN.discriminate))
  real, fake = np.asarray(disc(params, x)), np.asarray(disc(params, recon))
  hinge = 0.5 * (np.maximum(1 - real, 0).mean() + np.maximum(1 + fake, 0).mean())
  np.testing.assert_allclose(m['d_loss'], hinge, rtol=1e-5)
  np.testing.assert_allclose([m['logits_real'], m['logits_fake']], [real.mean(), fake.mean()],
                             rtol=1e-5, atol=1e-6)
  vc = c.vqgan
  want = (m['rec_loss'] + vc.codebook_weight * m['codebook_loss'] + vc.beta * m['commit_loss']
          + m['gan_weight'] * m['g_loss'])
  assert float(m['gan_weight']) > 0 and float(m['g_loss']) != 0
  np.testing.assert_allclose(m['loss'], want, rtol=1e-5)


def test_before_disc_start_the_step_is_reconstruction_only_and_the_discriminator_waits(stepped):
  """A step before config.vqgan.disc_start (the adversarial terms on later in the run):
  no adversarial term in the generator's gradient, and the discriminator's params and its
  optimizer state (Adam's count too) stay as they were."""
  import copy
  c, exp, batch, states, _ = stepped
  late = copy.deepcopy(c)
  late.vqgan.disc_start = 5  # < num_steps 8: the step compiles the GAN branch
  task = vqgan_task.ImageCodec(late, None)
  assert task.uses_gan()
  with jax.threefry_partitionable(False):
    step = jax.jit(task.train_step(exp.model, exp.tx, exp.labels, exp.schedule))
    new, m = jax.device_get(step(states[0], batch))
  assert float(m['g_loss']) == 0 and float(m['gan_weight']) == 0 and float(m['d_loss']) == 0
  jax.tree.map(np.testing.assert_array_equal, new.params['discriminator'],
               states[0].params['discriminator'])
  jax.tree.map(np.testing.assert_array_equal, new.opt_state['discriminator'],
               states[0].opt_state['discriminator'])
  model, params = exp.model, states[0].params
  x = np.array(pixels_lib.as_floats(batch)['images'])
  gen = {k: v for k, v in params.items() if k != 'discriminator'}

  def rec_and_vq(g):
    recon, aux = model.apply({'params': {**g, 'discriminator': params['discriminator']}}, x)
    return jnp.mean(jnp.abs(recon - x)) + task._vq_loss(aux)
  grads = jax.jit(jax.grad(rec_and_vq))(gen)
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(m['grad_norm'], norm, rtol=1e-4)


def test_the_discriminator_steps_at_disc_lr_and_the_generator_at_optim_lr():
  """config.vqgan.disc_lr reaches the discriminator's optimizer (no recipe or test set it)."""
  from radjax.train import optimizer as optimizer_lib
  c = vqgan_recipe.get_config('size=micro')
  c.optim.warmup_steps, c.optim.min_lr_ratio, c.optim.lr, c.vqgan.disc_lr = 0, 1.0, 1e-3, 4e-3
  task = vqgan_task.ImageCodec(c, None)
  params = {'decoder': {'bias': jnp.zeros(3)}, 'discriminator': {'bias': jnp.zeros(3)}}
  tx, _ = task.optimizer(optimizer_lib.param_labels(params, c.optim.param_groups))
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates['decoder']['bias'], -1e-3, rtol=1e-4)  # Adam's first step: -lr
  np.testing.assert_allclose(updates['discriminator']['bias'], -4e-3, rtol=1e-4)


def test_codebook_loss_moves_the_codes_and_commitment_loss_the_encoder():
  """|sg(z) - e|^2 has gradients for the codebook only, |z - sg(e)|^2 for z only."""
  cfg = vqgan.VQGANConfig(kind='vqgan', codebook_size=11, codebook_dim=3)
  q = vqgan.Quantizer(cfg)
  z = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
  params = {**nn.meta.unbox(q.init(jax.random.key(0), z)['params']),
            'embedding': jax.random.normal(jax.random.key(2), (11, 3))}
  codes = q.apply({'params': params}, z)[1]
  e = params['embedding'][codes]
  loss = lambda p, z, key: jnp.sum(q.apply({'params': p}, z)[2][key])
  g_book, g_z = jax.grad(loss, argnums=(0, 1))(params, z, 'codebook_loss')
  np.testing.assert_array_equal(g_z, 0)
  want = jax.ops.segment_sum((2 / 3 * (e - z)).reshape(-1, 3), codes.reshape(-1), 11)
  np.testing.assert_allclose(g_book['embedding'], want, rtol=1e-5, atol=1e-6)
  g_book, g_z = jax.grad(loss, argnums=(0, 1))(params, z, 'commit_loss')
  np.testing.assert_array_equal(g_book['embedding'], 0)
  np.testing.assert_allclose(g_z, 2 / 3 * (z - e), rtol=1e-5, atol=1e-6)


def test_cosine_codes_compare_directions_and_decode_as_the_forward_does():
  """l2_normalize: the lookup compares unit vectors on both sides (the largest cosine, not
  the nearest raw code), and decode_codes(codes(x)) is the forward's reconstruction."""
  e = jnp.array([[10.0, 0.0], [0.0, 1.0]])
  z = jnp.array([[1.0, 0.9]])  # cosine 0.74 with code 0, 0.67 with code 1
  assert int(vqgan.nearest_codes(z, e, l2_normalize=True)[0]) == 0
  assert int(vqgan.nearest_codes(z, e)[0]) == 1
  import dataclasses
  cfg = factory.part_config(vqgan_recipe.get_config('size=micro').model, 'vqgan')
  for l2 in (False, True):
    model = vqgan.VQGAN(dataclasses.replace(cfg, l2_normalize=l2))
    x = jax.random.uniform(jax.random.key(1), (2, cfg.image_size, cfg.image_size,
                                               cfg.num_channels), minval=-1.0, maxval=1.0)
    params = jax.jit(model.init)(jax.random.key(0), x)
    recon, aux = jax.jit(model.apply)(params, x)
    again = jax.jit(lambda p, c: model.apply(p, c, method=vqgan.VQGAN.decode_codes))(
        params, aux['codes'])
    np.testing.assert_allclose(again, recon, rtol=1e-5, atol=1e-5)


def test_a_frozen_codebook_is_not_moved_by_ema_or_restarts(demo_data):
  """config.optim.param_groups freezing the quantizer (a decoder fine-tuned under fixed
  codes, the ones an LLM-CXR decoder learned) keeps its codebook and statistics through
  EMA updates and dead-code restarts, which move it without gradients."""
  from radjax.data import pipeline
  from radjax.train import setup
  c = micro_config(demo_data)
  c.vqgan.ema, c.vqgan.restart_every, c.vqgan.restart_threshold = True, 1, 1.0
  c.optim.param_groups = (('quantize/.*', 'frozen'), ('.*', 1.0))
  c.optim.warmup_steps = 0  # the first step trains at the full LR
  task = run_lib.make_task(c)
  with jax.threefry_partitionable(False):
    exp = setup.build(c, task)
    ds = pipeline.eval_dataset(c, task.processor(), 'train', c.train.batch_size)
    batch = pipeline.to_global(ds[0], exp.batch_shardings)
    before = jax.device_get(exp.state.params)
    state, _ = setup.jit_train_step(exp)(exp.state, batch)
  after = jax.device_get(state.params)
  for name, value in before['quantize'].items():
    np.testing.assert_array_equal(nn.meta.unbox(after['quantize'][name]),
                                  nn.meta.unbox(value), err_msg=name)
  assert not np.array_equal(nn.meta.unbox(after['decoder']['conv_out']['kernel']),
                            nn.meta.unbox(before['decoder']['conv_out']['kernel']))  # trained
