"""EVA ViT (BLIP-2's vision tower) <-> HF `Blip2VisionModel`, a BLIP-2 model's tower and
Q-Former through the CLI and `init_from`, and the same weights from a LAVIS-layout `.pth`
(XrayGPT's vision + Q-Former) and a MiniGPT-4-style `llama_proj` checkpoint."""
import dataclasses
import re

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common, hf_io, parts  # noqa: E402
from radjax.convert import qformer as qformer_convert  # noqa: E402
from radjax.convert import vit as vit_convert  # noqa: E402
from radjax.convert.hf_config import UnsupportedConfig  # noqa: E402
from radjax.core import defaults, workdir  # noqa: E402
from radjax.models import factory, qformer, registry, vit  # noqa: E402
from radjax.models.runtime import Runtime  # noqa: E402
from radjax.train import pretrained  # noqa: E402

TOL = 1e-4
# Odd sizes: 3 heads of 16, 2x2 patches + CLS, Q-Former 36 wide into a 44-wide LM.
EMBED, IMAGE, PATCH, LAYERS = 48, 28, 14, 3
HIDDEN, TEXT, QUERIES = 36, 44, 5
_VISION = dict(hidden_size=EMBED, intermediate_size=80, num_hidden_layers=LAYERS,
               num_attention_heads=3, image_size=IMAGE, patch_size=PATCH)


def _randomise(model, skip=('language_model',)):
  """HF inits norms to 1, biases and query tokens to 0: random values make each count.
  The fused qkv bias gets a random k third too, which no output may depend on."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith(skip):
        continue
      if 'norm' in name.lower() and name.endswith('weight'):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith('bias') or 'query_tokens' in name or 'embedding' in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _tiny_blip2_vision(seed=0):
  torch.manual_seed(seed)
  return _randomise(transformers.Blip2VisionModel(transformers.Blip2VisionConfig(**_VISION)))


def _tiny_blip2(seed=0):
  torch.manual_seed(seed)
  qc = transformers.Blip2QFormerConfig(hidden_size=HIDDEN, num_hidden_layers=2,
                                       num_attention_heads=3, intermediate_size=52,
                                       encoder_hidden_size=EMBED, cross_attention_frequency=2)
  tc = transformers.OPTConfig(hidden_size=TEXT, num_hidden_layers=1, ffn_dim=64,
                              num_attention_heads=2, vocab_size=100, word_embed_proj_dim=TEXT)
  cfg = transformers.Blip2Config(vision_config=_VISION, qformer_config=qc.to_dict(),
                                 text_config=tc.to_dict(), num_query_tokens=QUERIES)
  return _randomise(transformers.Blip2ForConditionalGeneration(cfg))


def _images(n=2, seed=0):
  return np.random.default_rng(seed).normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2))


def _features(cfg, params, images, scan=True):
  return vit.ViT(cfg, Runtime(scan_layers=scan)).apply({'params': params}, images)


def _assert_same_params(a, b):
  fa, fb = common.flatten(a), common.flatten(b)
  assert sorted(fa) == sorted(fb)
  for name in fa:
    np.testing.assert_array_equal(np.asarray(fa[name]), np.asarray(fb[name]), err_msg=name)


@pytest.fixture(scope='module')
def blip2_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('blip2') / 'hf')
  model = _tiny_blip2()
  model.save_pretrained(path)
  return path, model


@pytest.mark.parametrize('scan', [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=['scanned', 'unscanned'])
def test_eva_matches_blip2_vision_model(scan, tmp_path):
  hf = _tiny_blip2_vision()
  hf.save_pretrained(tmp_path / 'hf')
  hf_cfg, state_dict = hf_io.load_hf_dir(str(tmp_path / 'hf'))
  qkv_bias = state_dict['encoder.layers.0.self_attn.qkv.bias']
  assert np.abs(qkv_bias[EMBED:2 * EMBED]).min() > 0  # a k bias, which must not matter
  cfg = vit_convert.vit_config_from_hf(hf_cfg)
  assert (cfg.variant, cfg.norm_eps, cfg.keep_class_token) == ('eva', 1e-6, True)
  params = vit_convert.params_from_hf(state_dict, cfg, scan=scan)
  block = params['layers'] if scan else params['layers_0']
  assert 'bias' not in block['k'] and 'bias' in block['q'] and 'pre_norm' not in params
  images = _images()
  with torch.no_grad():
    out = hf(_nchw(images), output_hidden_states=True)
  feats, aux = _features(cfg, params, images, scan)
  diff = np.abs(np.asarray(feats) - out.last_hidden_state.numpy()).max()
  print(f'eva scan={scan} import max|dfeat|={diff:.2e}')
  assert feats.shape == (2, 5, EMBED) and diff <= TOL
  np.testing.assert_allclose(aux['pooled'], out.pooler_output.numpy(), atol=TOL)
  # The CLS token dropped on request; an earlier layer gets the post-norm too.
  no_cls, _ = _features(dataclasses.replace(cfg, keep_class_token=False), params, images, scan)
  np.testing.assert_allclose(no_cls, out.last_hidden_state.numpy()[:, 1:], atol=TOL)
  early, _ = _features(dataclasses.replace(cfg, select_layer=-2), params, images, scan)
  with torch.no_grad():
    want = hf.post_layernorm(out.hidden_states[-2]).numpy()
  np.testing.assert_allclose(early, want, atol=TOL)

  exported = vit_convert.hf_from_params(params, cfg)
  assert sorted(exported) == sorted(state_dict)
  for name, value in state_dict.items():
    if name.endswith('qkv.bias'):  # the k third comes back as HF builds it: zeros
      value = np.concatenate([value[:EMBED], np.zeros(EMBED, value.dtype), value[2 * EMBED:]])
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
  hf_io.save_hf_dir(str(tmp_path / 'out'), vit_convert.hf_config_from_vit(cfg), exported)
  back, info = transformers.Blip2VisionModel.from_pretrained(tmp_path / 'out',
                                                             output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  with torch.no_grad():
    again = back.eval()(_nchw(images)).last_hidden_state.numpy()
  diff = np.abs(again - np.asarray(feats)).max()
  print(f'eva scan={scan} export max|dfeat|={diff:.2e}')
  assert diff <= TOL


def test_blip2_vision_errors_name_the_tensor_or_field():
  hf = _tiny_blip2_vision(1)
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  cfg = vit_convert.vit_config_from_hf(hf.config)
  bad = {**sd, 'encoder.layers.1.self_attn.qkv.weight': np.zeros((143, EMBED), np.float32)}
  with pytest.raises(common.ConversionError, match=r'layers\.1\.self_attn\.qkv\.weight'):
    vit_convert.params_from_hf(bad, cfg, scan=True)
  bad = {k: v for k, v in sd.items() if k != 'post_layernorm.bias'}
  with pytest.raises(common.ConversionError, match=r'post_layernorm\.bias'):
    vit_convert.params_from_hf(bad, cfg, scan=True)
  with pytest.raises(UnsupportedConfig, match='qkv_bias'):
    vit_convert.vit_config_from_hf(transformers.Blip2VisionConfig(qkv_bias=False))
  with pytest.raises(UnsupportedConfig, match='hidden_act'):
    vit_convert.vit_config_from_hf(transformers.Blip2VisionConfig(hidden_act='quick_gelu'))
  with pytest.raises(ValueError, match="'evo'"):
    vit.ViTConfig('evo', 28, 14, 48, 3, 3, 80)


def test_blip2_dir_through_cli_and_init_from(blip2_dir, tmp_path):
  """The tower of a Blip2ForConditionalGeneration gives exactly what its Q-Former reads,
  and, with the Q-Former imported too, the projected query outputs."""
  path, hf = blip2_dir
  images = _images(seed=1)
  seen = {}
  hook = hf.qformer.register_forward_pre_hook(
      lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
  with torch.no_grad():
    projected = hf.get_image_features(_nchw(images)).pooler_output.numpy()
  hook.remove()
  qformer_input = seen['encoder_hidden_states'].numpy()

  assert convert_cli.main(['from-hf', '--family', 'blip2_vision', '--hf_dir', path,
                           '--out', str(tmp_path / 'wd')]) == 0
  config = workdir.load_config(str(tmp_path / 'wd'))
  cfg = factory.part_config(config.model, 'vision')
  assert (config.model.kind, cfg.variant, cfg.keep_class_token) == ('vision', 'eva', True)
  params = workdir.load_params(str(tmp_path / 'wd'))
  feats, _ = _features(cfg, params, images)
  diff = np.abs(np.asarray(feats) - qformer_input).max()
  print(f'blip2 tower vs Q-Former input max|d|={diff:.2e}')
  assert diff <= TOL
  assert convert_cli.main(['from-hf', '--family', 'blip2_qformer', '--hf_dir', path,
                           '--out', str(tmp_path / 'wdq')]) == 0
  qconfig = workdir.load_config(str(tmp_path / 'wdq'))
  qcfg = factory.part_config(qconfig.model, 'projector')
  qparams = workdir.load_params(str(tmp_path / 'wdq'))
  got = qformer.QFormerProjector(qcfg).apply({'params': qparams}, feats)
  diff = np.abs(np.asarray(got) - projected).max()
  print(f'blip2 tower + Q-Former vs get_image_features max|d|={diff:.2e}')
  assert diff <= TOL

  # init_from=<BLIP-2 dir> gives the same tower, in the other layer layout too.
  for scan in (True, False):
    target = _vision_config(cfg, scan)
    target.model.vision.init_from = path
    loaded = pretrained.loaders(target, {'vision': 'vision'})['vision'](None)
    want = params if scan else vit_convert.params_from_hf(
        vit_convert.hf_from_params(params, cfg), cfg, scan=False)
    _assert_same_params(loaded, want)
  # A wrong family is refused by model_type.
  assert convert_cli.main(['from-hf', '--family', 'clip_vision', '--hf_dir', path,
                           '--out', str(tmp_path / 'wd2')]) == 2


def _vision_config(cfg, scan=True):
  config = defaults.get_config()
  config.model.kind = 'vision'
  config.runtime.scan_layers = scan
  for k, v in factory.part_fields(cfg).items():
    config.model.vision[k] = v
  return config


def _projector_config(cfg):
  config = defaults.get_config()
  config.model.kind = 'projector'
  for k, v in factory.part_fields(cfg).items():
    config.model.projector[k] = v
  return config


# The LAVIS layout, written out by hand (not from radjax.convert.lavis's table), in the
# order the rows must apply.
_TO_LAVIS = (
    ('vision_model.embeddings.class_embedding', 'visual_encoder.cls_token'),
    ('vision_model.embeddings.position_embedding', 'visual_encoder.pos_embed'),
    ('vision_model.embeddings.patch_embedding.', 'visual_encoder.patch_embed.proj.'),
    ('vision_model.encoder.layers.', 'visual_encoder.blocks.'),
    ('.layer_norm1.', '.norm1.'), ('.layer_norm2.', '.norm2.'),
    ('.self_attn.qkv.', '.attn.qkv.'), ('.self_attn.projection.', '.attn.proj.'),
    ('vision_model.post_layernorm.', 'ln_vision.'),
    ('qformer.layernorm.', 'Qformer.bert.embeddings.LayerNorm.'),
    ('.attention.attention.', '.attention.self.'),
    ('.crossattention.attention.', '.crossattention.self.'),
    ('qformer.encoder.', 'Qformer.bert.encoder.'),
    ('language_projection.', 'llama_proj.'),
)
# What LAVIS / MiniGPT-4 checkpoints also hold and a VLM never runs.
_LAVIS_EXTRAS = ('Qformer.cls.predictions.bias', 'Qformer.bert.embeddings.word_embeddings.weight',
                 'Qformer.bert.encoder.layer.0.intermediate.dense.weight',
                 'Qformer.bert.encoder.layer.1.output.LayerNorm.weight', 'vision_proj.weight',
                 'temp', 'llama_model.model.embed_tokens.weight')


def _lavis_state_dict(hf_model) -> dict:
  out = {}
  for name, value in hf_model.state_dict().items():
    if name.startswith('language_model.'):
      continue
    if name.endswith('self_attn.qkv.bias'):  # EVA: q_bias and v_bias, no k bias
      stem = name.removesuffix('self_attn.qkv.bias').replace(
          'vision_model.encoder.layers.', 'visual_encoder.blocks.')
      out[stem + 'attn.q_bias'] = value[:EMBED].clone()
      out[stem + 'attn.v_bias'] = value[2 * EMBED:].clone()
      continue
    for a, b in _TO_LAVIS:
      name = name.replace(a, b)
    out[name] = value.clone()
  for name in _LAVIS_EXTRAS:
    out[name] = torch.ones(3)
  return out


def test_lavis_pth_gives_the_hf_dir_params(blip2_dir, tmp_path):
  """A BLIP-2 `.pth` in LAVIS names ({'model': ..., 'epoch': ...}) initialises the EVA
  tower and the Q-Former (llama_proj as its projection) exactly as the HF directory."""
  path, hf = blip2_dir
  pth = str(tmp_path / 'blip2_lavis.pth')
  torch.save({'model': _lavis_state_dict(hf), 'epoch': 3, 'config': {'arch': 'blip2'}}, pth)
  hf_cfg, sd = hf_io.load_hf_dir(path)
  vision_cfg = vit_convert.vit_config_from_hf(hf_cfg.vision_config)
  q_cfg = qformer_convert.config_from_hf(hf_cfg)
  for scan in (True, False):
    config = _vision_config(vision_cfg, scan)
    config.model.vision.init_from = pth
    got = pretrained.loaders(config, {'vision': 'vision'})['vision'](None)
    _assert_same_params(got, parts.params_for('vision', hf_cfg, sd, vision_cfg, scan))
  config = _projector_config(q_cfg)
  config.model.projector.init_from = pth
  got = pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  _assert_same_params(got, parts.params_for('projector', hf_cfg, sd, q_cfg, True))

  # A name the table does not know is an error naming it and the file.
  bad = str(tmp_path / 'bad.pth')
  torch.save({'model': {**_lavis_state_dict(hf), 'visual_encoder.blocks.0.gamma_1':
                        torch.ones(EMBED)}}, bad)
  config.model.projector.init_from = bad
  with pytest.raises(common.ConversionError, match=r'bad\.pth.*blocks\.0\.gamma_1'):
    pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  # A tower whose width the target does not have: the tensor is named.
  config = _vision_config(dataclasses.replace(vision_cfg, mlp_dim=96))
  config.model.vision.init_from = pth
  with pytest.raises(common.ConversionError, match=r'mlp\.fc1\.weight'):
    pretrained.loaders(config, {'vision': 'vision'})['vision'](None)


def test_minigpt4_checkpoint_initialises_linear_projector(tmp_path):
  torch.manual_seed(0)
  proj = torch.nn.Linear(HIDDEN, TEXT)
  pth = str(tmp_path / 'xraygpt_stage2.pth')
  torch.save({'model': {'llama_proj.weight': proj.weight.detach(),
                        'llama_proj.bias': proj.bias.detach()},
              'optimizer': {'state': {}, 'param_groups': [{'lr': 3e-5}]}, 'epoch': 1}, pth)
  config = defaults.get_config()
  config.model.kind = 'projector'
  config.model.projector.update(dict(kind='linear', in_dim=HIDDEN, out_dim=TEXT, init_from=pth))
  params = pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  np.testing.assert_array_equal(params['fc']['kernel'], proj.weight.detach().numpy().T)
  np.testing.assert_array_equal(params['fc']['bias'], proj.bias.detach().numpy())
  cfg = factory.part_config(config.model, 'projector')
  x = np.random.default_rng(0).normal(size=(2, QUERIES, HIDDEN)).astype(np.float32)
  got = registry.module('projector', cfg).apply({'params': params}, x)
  with torch.no_grad():
    np.testing.assert_allclose(got, proj(torch.from_numpy(x)).numpy(), atol=1e-5)
  # The wrong width is named; so is a Q-Former in a file given to a linear projector.
  config.model.projector.in_dim = HIDDEN + 1
  with pytest.raises(common.ConversionError, match=r'language_projection\.weight'):
    pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  config.model.projector.in_dim = HIDDEN
  torch.save({'model': {'llama_proj.weight': proj.weight.detach(),
                        'llama_proj.bias': proj.bias.detach(),
                        'query_tokens': torch.zeros(1, QUERIES, HIDDEN)}}, pth)
  with pytest.raises(common.ConversionError, match=re.escape("['query_tokens']")):
    pretrained.loaders(config, {'projector': 'projector'})['projector'](None)


def test_qformer_from_blip2_and_llama_proj_from_xraygpt(blip2_dir, tmp_path):
  """init_from='blip2.pth,xraygpt.pth': the Q-Former from BLIP-2, the projection to
  Vicuna's width from XrayGPT's checkpoint (the later file wins)."""
  path, hf = blip2_dir
  blip2 = str(tmp_path / 'blip2.pth')
  torch.save({'model': _lavis_state_dict(hf)}, blip2)
  torch.manual_seed(1)
  proj = torch.nn.Linear(HIDDEN, TEXT + 8)  # a wider LLM than the BLIP-2 one
  xraygpt = str(tmp_path / 'xraygpt.pth')
  torch.save({'model': {'llama_proj.weight': proj.weight.detach(),
                        'llama_proj.bias': proj.bias.detach()}}, xraygpt)
  hf_cfg, sd = hf_io.load_hf_dir(path)
  q_cfg = dataclasses.replace(qformer_convert.config_from_hf(hf_cfg), out_dim=TEXT + 8)
  config = _projector_config(q_cfg)
  config.model.projector.init_from = f'{blip2},{xraygpt}'
  got = pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  want = parts.params_for('projector', hf_cfg, sd, qformer_convert.config_from_hf(hf_cfg), True)
  _assert_same_params({k: v for k, v in got.items() if k != 'out'},
                      {k: v for k, v in want.items() if k != 'out'})
  np.testing.assert_array_equal(got['out']['kernel'], proj.weight.detach().numpy().T)
  config.model.projector.init_from = f'{blip2},{tmp_path}/missing.pth'
  with pytest.raises(FileNotFoundError, match='missing.pth'):
    pretrained.loaders(config, {'projector': 'projector'})
  # XrayGPT's file alone lacks the Q-Former: the knob, the file and the order are named.
  config.model.projector.init_from = xraygpt
  with pytest.raises(common.ConversionError, match=r"config\.model\.projector\.init_from='.*xraygpt"
                                            r"\.pth': HF tensor .* is missing.*BLIP-2's \.pth"):
    pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
