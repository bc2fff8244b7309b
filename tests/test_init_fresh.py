"""config.model.projector.init_fresh: the params it names start from their initialisation
whatever init_from holds for them, at any shape or not at all. XrayGPT's stage 1 from an HF
BLIP-2 OPT (blip2-opt-2.7b projects 768 -> 2560) into Vicuna (4096 wide) takes the Q-Former
and starts llama_proj new; without init_fresh the width mismatch is an error naming it."""
import re

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from configs import xraygpt  # noqa: E402
from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common, hf_io  # noqa: E402
from radjax.convert import qformer as qformer_convert  # noqa: E402
from radjax.core import sharding  # noqa: E402
from radjax.data import pipeline  # noqa: E402
from radjax.train import pretrained, setup  # noqa: E402
from tests.conftest import build_experiment  # noqa: E402

OPT_WIDTH = 24  # the BLIP-2's language model; XrayGPT micro's decoder is 32 wide


def _config(demo_data):
  config = xraygpt.get_config('size=micro')
  config.data.dir = demo_data
  return config


def _tiny_blip2_opt(config):
  """An HF Blip2ForConditionalGeneration whose Q-Former is XrayGPT micro's and whose OPT
  (so language_projection's output) is OPT_WIDTH wide."""
  p, v = config.model.projector, config.model.vision
  torch.manual_seed(0)
  vc = transformers.Blip2VisionConfig(hidden_size=v.embed_dim, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      image_size=28, patch_size=14)
  qc = transformers.Blip2QFormerConfig(
      hidden_size=p.hidden_dim, num_hidden_layers=p.num_layers, num_attention_heads=p.num_heads,
      intermediate_size=p.mlp_dim, encoder_hidden_size=v.embed_dim,
      cross_attention_frequency=p.cross_attention_every, layer_norm_eps=p.norm_eps)
  tc = transformers.OPTConfig(hidden_size=OPT_WIDTH, num_hidden_layers=1, ffn_dim=48,
                              num_attention_heads=2, vocab_size=100,
                              word_embed_proj_dim=OPT_WIDTH)
  cfg = transformers.Blip2Config(vision_config=vc.to_dict(), qformer_config=qc.to_dict(),
                                 text_config=tc.to_dict(), num_query_tokens=p.num_queries)
  model = transformers.Blip2ForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # HF inits norms to 1, biases and query tokens to 0: make each count
    for name, t in model.named_parameters():
      if not name.startswith(('vision_model', 'language_model')):
        t.add_(torch.randn_like(t) * 0.2)
  return model


@pytest.fixture(scope='module')
def sources(demo_data, tmp_path_factory):
  """The same BLIP-2 OPT as an HF directory, a projector workdir (`from-hf`), a weights file
  in HF names and one without the projection; and the Q-Former params they all hold."""
  tmp = tmp_path_factory.mktemp('blip2_opt')
  hf_dir = str(tmp / 'hf')
  _tiny_blip2_opt(_config(demo_data)).save_pretrained(hf_dir)
  wd = str(tmp / 'wd')
  assert convert_cli.main(['from-hf', '--family', 'blip2_qformer', '--hf_dir', hf_dir,
                           '--out', wd]) == 0
  hf_cfg, sd = hf_io.load_hf_dir(hf_dir)
  tensors = {k: np.ascontiguousarray(v) for k, v in sd.items()
             if not k.startswith('language_model.')}
  file = str(tmp / 'blip2.safetensors')
  save_file(tensors, file)
  qformer_only = str(tmp / 'qformer.safetensors')
  save_file({k: v for k, v in tensors.items() if not k.startswith('language_projection.')},
            qformer_only)
  source_cfg = qformer_convert.config_from_hf(hf_cfg)
  assert source_cfg.out_dim == OPT_WIDTH
  held = common.flatten(qformer_convert.params_from_hf(sd, source_cfg))
  return {'hf_dir': hf_dir, 'workdir': wd, 'file': file, 'qformer_only': qformer_only}, held


def _one_train_step(exp):
  it = pipeline.make_iterator(pipeline.train_dataset(exp.config, exp.task.processor, 'train'),
                              0)
  batch = next(it)
  with sharding.activation_rules(exp.mesh, exp.rules):
    g = {k: jax.device_put(v, exp.batch_shardings[k]) for k, v in batch.items()
         if k in exp.batch_shardings}
    _, metrics = setup.jit_train_step(exp)(exp.state, g)
  return float(metrics['loss'])


@pytest.mark.parametrize('kind', ['hf_dir', 'workdir', 'file', 'qformer_only'])
def test_init_fresh_params_may_have_another_shape_or_be_absent(demo_data, sources, kind):
  paths, held = sources
  config = _config(demo_data)
  assert config.model.projector.init_fresh == 'out/.*'
  scratch = common.flatten(jax.device_get(build_experiment(config).state.params['projector']))
  assert scratch['out/kernel'].shape == (64, 32)
  config.model.projector.init_from = paths[kind]
  exp = build_experiment(config)
  got = common.flatten(jax.device_get(exp.state.params['projector']))
  assert sorted(got) == sorted(scratch)
  for name, value in got.items():
    want = scratch[name] if name.startswith('out/') else held[name]
    np.testing.assert_array_equal(value, want, err_msg=name)
  if kind == 'hf_dir':
    assert np.isfinite(_one_train_step(exp))
  # The loader itself leaves the fresh params out.
  loaded = pretrained.loaders(config, {'projector': 'projector'})['projector'](None)
  assert 'out' not in loaded and 'query_tokens' in loaded


@pytest.mark.parametrize('kind', ['hf_dir', 'workdir', 'file', 'qformer_only'])
def test_without_init_fresh_the_mismatch_is_named(demo_data, sources, kind):
  paths, _ = sources
  config = _config(demo_data)
  config.model.projector.init_fresh = ''
  config.model.projector.init_from = paths[kind]
  want = {
      'hf_dir': r'projector\.out_dim=32 but the pretrained model has 24: out/bias has shape '
                r'\(24,\) there, \(32,\) here',
      'workdir': r'projector\.out_dim=32 but the pretrained model has 24: out/bias has shape '
                 r'\(24,\) there, \(32,\) here',
      'file': r"init_from='.*blip2\.safetensors': HF tensor 'language_projection\.weight' has "
              r"shape \(24, 64\), expected \(32, 64\) for 'out/kernel'",
      'qformer_only': r"HF tensor 'language_projection\.weight' is missing"}[kind]
  with pytest.raises(common.ConversionError, match=want):
    build_experiment(config)


def test_init_fresh_excuses_no_other_mismatch(demo_data, sources):
  """A difference init_fresh does not cover stays an error: a Q-Former of another depth,
  or a width that shapes params it leaves out."""
  paths, _ = sources
  config = _config(demo_data)
  config.model.projector.num_layers = 3
  config.model.projector.init_from = paths['hf_dir']
  with pytest.raises(common.ConversionError, match=re.escape(
      'config.model.projector.num_layers=3 but the pretrained model has 2')):
    build_experiment(config)
  config = _config(demo_data)
  config.model.projector.init_fresh = 'out/kernel'
  config.model.projector.init_from = paths['hf_dir']
  with pytest.raises(common.ConversionError, match=r'out_dim=32 .* out/bias has shape'):
    build_experiment(config)


def test_a_llava_projector_into_one_with_an_image_newline(tmp_path):
  """A Llava's projector (no image_newline) into a LLaVA-OneVision-style one (AnyRes): with
  init_fresh='image_newline' the two linears load and the newline starts new."""
  import dataclasses

  from radjax.convert import llava
  from tests import hf_models
  hf = hf_models.tiny_llava()
  hf.save_pretrained(tmp_path / 'llava')
  hf_cfg, sd = hf_io.load_hf_dir(str(tmp_path / 'llava'))
  cfg = llava.vlm_config_from_hf(hf_cfg).projector
  want = common.flatten(llava.projector_params_from_hf(sd, cfg, hf_cfg.text_config.model_type))
  target = dataclasses.replace(cfg, image_newline=True)
  got = common.flatten(pretrained._from_hf_dir('projector', str(tmp_path / 'llava'), target,
                                               scan=True, fresh='image_newline'))
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  with pytest.raises(common.ConversionError, match='has an image_newline .* the HF model has '
                                                   'none'):
    pretrained._from_hf_dir('projector', str(tmp_path / 'llava'), target, scan=True)


def test_a_field_may_differ_only_where_it_reshapes_fresh_params_alone():
  """Field by field, without loading: out_dim reshapes only out/* (let differ under
  init_fresh='out/.*'; not under 'out/kernel', which leaves out/bias loaded); norm_eps
  reshapes nothing, so no init_fresh lets it differ (the loaded Q-Former would run at
  another epsilon)."""
  import dataclasses

  from radjax.convert import parts
  from radjax.models import qformer
  target = qformer.QFormerConfig(in_dim=16, out_dim=32, num_queries=4, hidden_dim=16,
                                 num_layers=2, num_heads=2, mlp_dim=32)
  def check(source, fresh):
    parts.check_same('projector', source, target, False, fresh)

  wider = dataclasses.replace(target, out_dim=24)
  check(wider, 'out/.*')
  with pytest.raises(common.ConversionError, match=re.escape(
      'config.model.projector.out_dim=32 but the pretrained model has 24: out/bias has '
      'shape (24,) there, (32,) here')):
    check(wider, 'out/kernel')
  with pytest.raises(common.ConversionError, match=re.escape(
      'config.model.projector.norm_eps=1e-12 but the pretrained model has 1e-06')):
    check(dataclasses.replace(target, norm_eps=1e-6), '.*')
