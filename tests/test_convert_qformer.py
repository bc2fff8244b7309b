"""The BLIP-2 Q-Former projector through `python -m radjax.convert`: a BLIP-2 directory
-> projector workdir (outputs equal HF's) -> `to-hf` -> Blip2QFormerModel.from_pretrained
(outputs equal again) -> `from-hf` of the export (params identical). Odd sizes throughout."""
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common  # noqa: E402
from radjax.convert import qformer as qformer_convert  # noqa: E402
from radjax.core import workdir  # noqa: E402
from radjax.models import factory, qformer  # noqa: E402

TOL = 1e-5
ENCODER, HIDDEN, TEXT, QUERIES = 40, 36, 44, 5


def _tiny_blip2(seed: int = 0):
  torch.manual_seed(seed)
  vc = transformers.Blip2VisionConfig(hidden_size=ENCODER, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, image_size=28,
                                      patch_size=14)
  qc = transformers.Blip2QFormerConfig(hidden_size=HIDDEN, num_hidden_layers=3,
                                       num_attention_heads=3, intermediate_size=52,
                                       encoder_hidden_size=ENCODER, cross_attention_frequency=2)
  tc = transformers.OPTConfig(hidden_size=TEXT, num_hidden_layers=1, ffn_dim=64,
                              num_attention_heads=2, vocab_size=100, word_embed_proj_dim=TEXT)
  cfg = transformers.Blip2Config(vision_config=vc.to_dict(), qformer_config=qc.to_dict(),
                                 text_config=tc.to_dict(), num_query_tokens=QUERIES)
  model = transformers.Blip2Model(cfg).eval()
  with torch.no_grad():  # HF inits query tokens to 0 and norms to 1/0: make every tensor count
    for name, p in model.named_parameters():
      if not name.startswith(('vision_model', 'language_model')):
        p.add_(torch.randn_like(p) * 0.2)
  return model


def _hf_out(qformer_model, query_tokens, projection, feats):
  with torch.no_grad():
    q = qformer_model(query_embeds=query_tokens.expand(feats.shape[0], -1, -1),
                      encoder_hidden_states=torch.from_numpy(feats)).last_hidden_state
    return projection(q).numpy()


def _cli(*argv):
  assert convert_cli.main([str(a) for a in argv]) == 0


def test_qformer_round_trip_through_the_cli(tmp_path):
  hf = _tiny_blip2()
  hf.save_pretrained(tmp_path / 'blip2')
  feats = np.random.default_rng(0).normal(size=(2, 7, ENCODER)).astype(np.float32)
  want = _hf_out(hf.qformer, hf.query_tokens, hf.language_projection, feats)

  _cli('from-hf', '--family', 'blip2_qformer', '--hf_dir', tmp_path / 'blip2', '--out',
       tmp_path / 'wd')
  config = workdir.load_config(str(tmp_path / 'wd'))
  assert (config.model.kind, config.model.projector.kind) == ('projector', 'qformer')
  cfg = factory.part_config(config.model, 'projector')
  assert (cfg.in_dim, cfg.out_dim, cfg.num_queries, cfg.num_layers) == (ENCODER, TEXT, QUERIES, 3)
  params = workdir.load_params(str(tmp_path / 'wd'))
  assert 'cross_attn' in params['qformer']['layers_0']
  assert 'cross_attn' not in params['qformer']['layers_1']
  got = np.asarray(qformer.QFormerProjector(cfg).apply({'params': params}, feats))
  assert got.shape == (2, QUERIES, TEXT)
  diff = np.abs(got - want).max()
  print(f'qformer workdir max|dout|={diff:.2e}')
  assert diff <= TOL

  _cli('to-hf', '--workdir', tmp_path / 'wd', '--out', tmp_path / 'out')
  back, info = transformers.Blip2QFormerModel.from_pretrained(tmp_path / 'out',
                                                              output_loading_info=True)
  assert not info['missing_keys']
  assert set(info['unexpected_keys']) == {'query_tokens', 'language_projection.weight',
                                          'language_projection.bias'}
  from safetensors.torch import load_file
  extra = load_file(str(tmp_path / 'out' / 'model.safetensors'))
  projection = torch.nn.Linear(HIDDEN, TEXT)
  projection.load_state_dict({'weight': extra['language_projection.weight'],
                              'bias': extra['language_projection.bias']})
  back_out = _hf_out(back.eval(), extra['query_tokens'], projection, feats)
  back_diff = np.abs(back_out - want).max()
  print(f'qformer to-hf max|dout|={back_diff:.2e}')
  assert back_diff <= TOL

  # The export imports back to the same parameters, bit for bit.
  _cli('from-hf', '--family', 'blip2_qformer', '--hf_dir', tmp_path / 'out', '--out',
       tmp_path / 'wd2')
  again = common.flatten(workdir.load_params(str(tmp_path / 'wd2')))
  for name, value in common.flatten(params).items():
    np.testing.assert_array_equal(again[name], value)


def test_qformer_errors_name_the_tensor(tmp_path):
  from radjax.convert import hf_io
  from radjax.convert import qformer as qformer_convert
  hf = _tiny_blip2(1)
  hf.save_pretrained(tmp_path / 'blip2')
  hf_cfg, sd = hf_io.load_hf_dir(str(tmp_path / 'blip2'))
  cfg = qformer_convert.config_from_hf(hf_cfg)
  name = 'qformer.encoder.layer.2.crossattention.attention.key.weight'
  with pytest.raises(common.ConversionError, match=name.replace('.', r'\.')):
    qformer_convert.params_from_hf({k: v for k, v in sd.items() if k != name}, cfg)
  with pytest.raises(common.ConversionError, match='language_projection'):
    qformer_convert.params_from_hf({**sd, 'language_projection.weight': np.zeros((3, 3))}, cfg)


def test_qformer_config_reads_and_writes_layer_norm_eps():
  qc = transformers.Blip2QFormerConfig(hidden_size=36, num_hidden_layers=1,
                                       num_attention_heads=3, intermediate_size=52,
                                       encoder_hidden_size=40, layer_norm_eps=1e-6)
  tc = transformers.OPTConfig(hidden_size=44, num_hidden_layers=1, ffn_dim=64,
                              num_attention_heads=2, vocab_size=100, word_embed_proj_dim=44)
  blip2 = transformers.Blip2Config(qformer_config=qc.to_dict(), text_config=tc.to_dict(),
                                   num_query_tokens=5)
  cfg = qformer_convert.config_from_hf(blip2)
  assert cfg.norm_eps == 1e-6  # not QFormerConfig's default 1e-12
  assert qformer_convert.config_from_hf(qformer_convert.hf_config(cfg)) == cfg
