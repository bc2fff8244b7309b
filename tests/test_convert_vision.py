"""HF CLIP/SigLIP vision towers <-> radjax ViT, verified by hidden states and pooled outputs."""
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax.convert import common, hf_io  # noqa: E402
from radjax.convert import vit as vit_convert  # noqa: E402
from radjax.convert.hf_config import UnsupportedConfig  # noqa: E402
from radjax.models import vit  # noqa: E402
from radjax.models.runtime import Runtime  # noqa: E402
from tests.hf_models import hf_vision_features, hf_vision_outputs, tiny_vision  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope='module', params=['clip', 'siglip'])
def hf_dir(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  tiny_vision(request.param).save_pretrained(path)
  return request.param, path


@pytest.fixture(scope='module')
def images():
  return np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize('select_layer', [-1, -2])
@pytest.mark.parametrize('scan', [True, False], ids=['scanned', 'unscanned'])
def test_import_export_match_hf(hf_dir, images, select_layer, scan, tmp_path):
  variant, path = hf_dir
  hf_config, state_dict = hf_io.load_hf_dir(path)
  hf_model = getattr(transformers, hf_config.architectures[0]).from_pretrained(path)
  hidden, last, pooled = hf_vision_outputs(hf_model, images)
  cfg = vit_convert.vit_config_from_hf(hf_config, select_layer=select_layer)
  rt = Runtime(scan_layers=scan)
  assert cfg.variant == variant and cfg.norm_eps == hf_config.layer_norm_eps
  params = vit_convert.params_from_hf(state_dict, cfg, scan=scan)
  # Every layer is in the params whatever select_layer is; later ones just never run.
  assert ('layers' in params) if scan else ('layers_2' in params)
  feats, aux = vit.ViT(cfg, rt).apply({'params': params}, images)
  diff = np.abs(np.asarray(feats) - hf_vision_features(hidden, variant, select_layer)).max()
  print(f'{variant} select={select_layer} scan={scan} import max|dfeat|={diff:.2e}')
  assert feats.shape[1] == cfg.num_tokens and diff <= TOL
  if variant == 'clip':
    keep = dataclasses.replace(cfg, keep_class_token=True)
    full, _ = vit.ViT(keep, rt).apply({'params': params}, images)
    want = hf_vision_features(hidden, variant, select_layer, keep_class_token=True)
    assert np.abs(np.asarray(full) - want).max() <= TOL
  if select_layer == -1:
    # CLIP pools post_layernorm(CLS); SigLIP's last_hidden_state is post_layernorm(all).
    want = pooled if variant == 'clip' else last
    diff = np.abs(np.asarray(aux['pooled']) - want).max()
    print(f'{variant} scan={scan} pooled max|d|={diff:.2e}')
    assert diff <= TOL

  exported = vit_convert.hf_from_params(params, cfg)
  assert all(k.startswith('vision_model.') for k in exported)
  for name, value in state_dict.items():  # the whole tower comes back bit for bit
    if not name.startswith('head.'):
      np.testing.assert_array_equal(exported['vision_model.' + name], value)
  out_dir = str(tmp_path / 'export')
  hf_io.save_hf_dir(out_dir, vit_convert.hf_config_from_vit(cfg), exported)
  reloaded, info = type(hf_model).from_pretrained(out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  hidden2, last2, pooled2 = hf_vision_outputs(reloaded, images)
  diff = np.abs(hf_vision_features(hidden2, variant, select_layer) - np.asarray(feats)).max()
  print(f'{variant} select={select_layer} scan={scan} export max|dfeat|={diff:.2e}')
  assert diff <= TOL
  np.testing.assert_allclose(last2, last, atol=TOL)
  if variant == 'clip':
    np.testing.assert_allclose(pooled2, pooled, atol=TOL)


def test_prefixed_names_and_errors(hf_dir):
  variant, path = hf_dir
  hf_config, state_dict = hf_io.load_hf_dir(path)
  cfg = vit_convert.vit_config_from_hf(hf_config, select_layer=-2)
  bare = vit_convert.params_from_hf(state_dict, cfg, scan=True)
  legacy = {'vision_model.' + k: v for k, v in state_dict.items()}
  legacy['vision_model.embeddings.position_ids'] = np.arange(17)[None]  # old buffer: ignored
  prefixed = vit_convert.params_from_hf(legacy, cfg, scan=True)
  for a, b in zip(common.flatten(bare).values(), common.flatten(prefixed).values()):
    np.testing.assert_array_equal(a, b)

  name = 'encoder.layers.2.mlp.fc1.weight'  # not run for select_layer=-2, still converted
  wrong = {**state_dict, name: np.zeros((80, 47), np.float32)}
  with pytest.raises(common.ConversionError, match=r'vision_model\.encoder\.layers\.2\.mlp'
                     r'\.fc1\.weight.*layers_2/fc1/kernel'):
    vit_convert.params_from_hf(wrong, cfg, scan=True)
  wrong = {**state_dict, 'embeddings.patch_embedding.weight': np.zeros((48, 3, 4, 4))}
  with pytest.raises(common.ConversionError, match=r'embeddings\.patch_embedding\.weight'):
    vit_convert.params_from_hf(wrong, cfg, scan=False)
  missing = {k: v for k, v in state_dict.items() if k != 'encoder.layers.0.self_attn.k_proj.bias'}
  with pytest.raises(common.ConversionError, match=r'layers\.0\.self_attn\.k_proj\.bias'):
    vit_convert.params_from_hf(missing, cfg, scan=True)
  extra = {**state_dict, 'visual_projection.weight': np.zeros((8, 48), np.float32)}
  with pytest.raises(common.ConversionError, match='visual_projection'):
    vit_convert.params_from_hf(extra, cfg, scan=True)
  if variant == 'clip':  # only SigLIP's pooling head is dropped
    extra = {**state_dict, 'head.probe': np.zeros((1, 1, 48), np.float32)}
    with pytest.raises(common.ConversionError, match='head.probe'):
      vit_convert.params_from_hf(extra, cfg, scan=True)
  params = vit_convert.params_from_hf(state_dict, cfg, scan=False)
  params['layers_2']['fc2']['bias'] = np.zeros(3, np.float32)
  with pytest.raises(common.ConversionError, match='layers_2/fc2/bias'):
    vit_convert.hf_from_params(params, cfg)


def test_unsupported_config_names_the_field():
  with pytest.raises(UnsupportedConfig, match='hidden_act'):
    vit_convert.vit_config_from_hf(transformers.CLIPVisionConfig(hidden_act='gelu'))
  with pytest.raises(UnsupportedConfig, match='model_type'):
    vit_convert.vit_config_from_hf(transformers.ViTConfig())
  for variant in ('clip', 'siglip'):
    cfg = vit.ViTConfig(variant=variant, image_size=32, patch_size=8, embed_dim=48,
                        num_layers=3, num_heads=3, mlp_dim=80, norm_eps=1e-6, select_layer=-2)
    back = vit_convert.vit_config_from_hf(vit_convert.hf_config_from_vit(cfg), select_layer=-2)
    assert back == cfg
