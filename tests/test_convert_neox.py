"""HF GPT-NeoX (dolly-v2, LLM-CXR's decoder) <-> radjax decoder conversion, verified by
logits and greedy decoding. Tiny random HF models are built from configs (no hub access)."""
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax import convert  # noqa: E402
from radjax.convert import common, gpt_neox, hf_config  # noqa: E402
from radjax.models import llm  # noqa: E402
from tests import hf_models  # noqa: E402


@pytest.fixture(scope='module', params=list(hf_models.GPT_NEOX_VARIANTS))
def hf_dir(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  hf_models.tiny_gpt_neox(request.param).save_pretrained(path)
  return request.param, path


@pytest.mark.parametrize('scan', [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=['scanned', 'unscanned'])  # unscanned: test_convert_llava's
def test_roundtrip_logits_and_generation(hf_dir, scan, tmp_path):
  variant, path = hf_dir
  cfg = hf_models.check_decoder_round_trip(path, 'gpt_neox', scan, str(tmp_path / 'export'),
                                           f'gpt_neox {variant} scan={scan}')
  assert (cfg.norm, cfg.mlp, cfg.linear_bias, cfg.qkv_bias) == ('layer', 'plain', True, True)
  assert cfg.parallel_residual == (variant == 'parallel')


def test_tied_head(tmp_path):
  path, out_dir = str(tmp_path / 'hf'), str(tmp_path / 'export')
  hf_models.tiny_gpt_neox('sequential', tie_word_embeddings=True).save_pretrained(path)
  hf_cfg, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_cfg)
  assert cfg.tie_embeddings
  params = convert.params_from_hf(state_dict, cfg, scan=True)
  assert 'lm_head' not in params
  tokens = hf_models.random_tokens(cfg.vocab_size, 128)
  got = np.asarray(hf_models.logits(llm.Decoder(cfg), params, tokens))
  hf_model = transformers.GPTNeoXForCausalLM.from_pretrained(path, dtype=torch.float32)
  assert np.abs(got - hf_models.hf_logits(hf_model, tokens)).max() <= 1e-4
  convert.save_hf_dir(out_dir, convert.hf_config_from_llm(cfg, 'gpt_neox'),
                      convert.hf_from_params(params, cfg))
  exported = transformers.GPTNeoXForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
  assert np.abs(hf_models.hf_logits(exported, tokens) - got).max() <= 1e-4


def test_export_matches_checkpoint_names(hf_dir):
  _, path = hf_dir
  hf_cfg, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_cfg)
  back = convert.hf_from_params(convert.params_from_hf(state_dict, cfg, scan=False), cfg)
  assert back.keys() == state_dict.keys()
  for k, v in state_dict.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_bf16_export_loads_in_bf16(hf_dir, tmp_path):
  hf_models.check_bf16_export(hf_dir[1], 'gpt_neox', str(tmp_path / 'bf16'))


def test_mismatches_name_the_tensor(hf_dir):
  variant, path = hf_dir
  hf_cfg, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_cfg)
  qkv = 'gpt_neox.layers.1.attention.query_key_value.weight'
  bad = {**state_dict, qkv: state_dict[qkv][:-1]}
  with pytest.raises(common.ConversionError, match=qkv.replace('.', r'\.')):
    convert.params_from_hf(bad, cfg, scan=True)
  dense = 'gpt_neox.layers.2.mlp.dense_4h_to_h.weight'
  bad = {**state_dict, dense: state_dict[dense].T}
  with pytest.raises(common.ConversionError, match=dense.replace('.', r'\.')):
    convert.params_from_hf(bad, cfg, scan=False)
  missing = {k: v for k, v in state_dict.items() if 'layers.0.attention.dense.bias' not in k}
  with pytest.raises(common.ConversionError, match=r'layers\.0\.attention\.dense\.bias'):
    convert.params_from_hf(missing, cfg, scan=True)
  # Non-persistent buffers from old checkpoints are tolerated; unknown tensors are not.
  buffers = {'gpt_neox.layers.0.attention.bias': np.ones((1, 1, 4, 4), bool),
             'gpt_neox.layers.0.attention.masked_bias': np.zeros((), np.float32),
             'gpt_neox.layers.0.attention.rotary_emb.inv_freq': np.zeros(2, np.float32)}
  convert.params_from_hf({**state_dict, **buffers}, cfg, scan=True)
  with pytest.raises(common.ConversionError, match=r'layers\.0\.mlp\.gate\.weight'):
    convert.params_from_hf({**state_dict, 'gpt_neox.layers.0.mlp.gate.weight': np.zeros(1)},
                           cfg, scan=True)
  if variant == 'parallel':  # transformers v5 calls the untied head lm_head in memory
    renamed = dict(state_dict)
    renamed['lm_head.weight'] = renamed.pop('embed_out.weight')
    convert.params_from_hf(renamed, cfg, scan=True)
  params = convert.params_from_hf(state_dict, cfg, scan=False)
  params['layers_1']['attn']['o']['bias'] = np.zeros((3,), np.float32)
  with pytest.raises(common.ConversionError, match='layers_1/attn/o/bias'):
    convert.hf_from_params(params, cfg)
  llama_like = dataclasses.replace(cfg, norm='rms', mlp='gated', linear_bias=False,
                                   parallel_residual=False, rotary_pct=1.0)
  with pytest.raises(common.ConversionError, match='model.embed_tokens.weight'):
    convert.params_from_hf(state_dict, llama_like, scan=True)
  with pytest.raises(common.ConversionError, match='linear_bias'):
    gpt_neox.params_from_hf(state_dict, dataclasses.replace(cfg, linear_bias=False), True)


@pytest.mark.parametrize('parallel', [True, False])
def test_config_roundtrip(parallel):
  cfg = llm.LLMConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=4,
                      num_kv_heads=4, mlp_dim=256, rope_theta=20000.0, norm_eps=1e-5,
                      qkv_bias=True, activation='gelu', norm='layer', mlp='plain',
                      linear_bias=True, parallel_residual=parallel, rotary_pct=0.25,
                      max_position_embeddings=2048)  # GPT-NeoX's, dolly-v2's
  hf = convert.hf_config_from_llm(cfg, 'gpt_neox')
  assert isinstance(hf, transformers.GPTNeoXConfig)
  assert hf.max_position_embeddings == 2048
  assert hf.architectures == ['GPTNeoXForCausalLM']
  assert convert.llm_config_from_hf(hf) == cfg
  assert convert.export_family(cfg) == 'gpt_neox'
  with pytest.raises(ValueError, match='num_kv_heads'):
    convert.hf_config_from_llm(dataclasses.replace(cfg, num_kv_heads=2), 'gpt_neox')
  with pytest.raises(ValueError, match='norm'):
    convert.hf_config_from_llm(cfg, 'llama')


def test_exported_config_json_keeps_the_pre_v5_rope_keys(tmp_path):
  """transformers < 5 ignores rope_parameters and would load base 10000 / its rotary_pct
  default without a word (other logits); 5.x ignores the top-level keys."""
  import json

  from radjax.convert import hf_io
  cfg = llm.LLMConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=4,
                      mlp_dim=256, rope_theta=20000.0, qkv_bias=True, activation='gelu',
                      norm='layer', mlp='plain', linear_bias=True, rotary_pct=0.5)
  qwen = dataclasses.replace(cfg, rope_theta=1e6, rotary_pct=1.0, norm='rms', mlp='gated',
                             linear_bias=False, activation='silu')
  text = convert.hf_config_from_llm(qwen, 'qwen2')
  for name, hf in (('neox', convert.hf_config_from_llm(cfg, 'gpt_neox')),
                   ('llava', transformers.LlavaConfig(text_config=text.to_dict()))):
    hf_io.save_hf_dir(str(tmp_path / name), hf, {})
    written = json.loads((tmp_path / name / 'config.json').read_text())
    if name == 'neox':
      assert (written['rope_theta'], written['rotary_emb_base'], written['rotary_pct']) == (
          20000.0, 20000.0, 0.5)
      assert convert.llm_config_from_hf(
          transformers.AutoConfig.from_pretrained(tmp_path / name)) == cfg
    else:
      assert written['text_config']['rope_theta'] == 1e6
      back = transformers.AutoConfig.from_pretrained(tmp_path / name).text_config
      assert back.rope_parameters['rope_theta'] == 1e6


def test_legacy_and_unsupported_configs():
  # Pre-v5 dolly-v2 config.json fields.
  hf = transformers.GPTNeoXConfig(rotary_pct=0.25, rotary_emb_base=10000, hidden_size=64,
                                  num_attention_heads=4, intermediate_size=256)
  cfg = convert.llm_config_from_hf(hf)
  assert (cfg.rotary_pct, cfg.rope_theta, cfg.rotary_dim) == (0.25, 10000.0, 4)
  with pytest.raises(hf_config.UnsupportedConfig, match='attention_bias'):
    convert.llm_config_from_hf(transformers.GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, attention_bias=False))
  with pytest.raises(hf_config.UnsupportedConfig, match='partial_rotary_factor'):
    convert.llm_config_from_hf(transformers.GPTNeoXConfig(
        hidden_size=64, num_attention_heads=4, rotary_pct=0.2))  # 3 rotary dims
  with pytest.raises(hf_config.UnsupportedConfig, match='partial_rotary_factor'):
    convert.llm_config_from_hf(transformers.LlamaConfig(
        rope_parameters={'rope_type': 'default', 'rope_theta': 1e4,
                         'partial_rotary_factor': 0.5}))


@pytest.mark.parametrize('field,value', [('norm', 'batch'), ('mlp', 'moe'),
                                         ('rotary_pct', 0.0), ('rotary_pct', 0.2),
                                         ('activation', 'relu6')])
def test_llm_config_rejects_bad_values(field, value):
  base = dict(vocab_size=16, embed_dim=64, num_layers=1, num_heads=4, num_kv_heads=4,
              mlp_dim=32)
  with pytest.raises(ValueError, match=f'config.model.llm.{field}'):
    llm.LLMConfig(**base, **{field: value})
