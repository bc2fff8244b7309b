"""HF LLaMA/Qwen2 <-> radjax decoder conversion, verified by logits and greedy decoding.

Tiny random HF models are built from configs (no hub access) and round-tripped
through safetensors directories.
"""
import dataclasses

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax import convert  # noqa: E402
from radjax.convert import common  # noqa: E402
from radjax.convert.hf_config import UnsupportedConfig  # noqa: E402
from radjax.models import llm  # noqa: E402
from tests import hf_models  # noqa: E402

TINY = {'llama': hf_models.tiny_llama, 'qwen2': hf_models.tiny_qwen2}


@pytest.fixture(scope='module', params=['llama', 'qwen2'])
def hf_dir(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  TINY[request.param]().save_pretrained(path)
  return request.param, path


@pytest.mark.parametrize('scan', [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=['scanned', 'unscanned'])  # unscanned: test_convert_llava's
def test_roundtrip_logits_and_generation(hf_dir, scan, tmp_path):
  family, path = hf_dir
  cfg = hf_models.check_decoder_round_trip(path, family, scan, str(tmp_path / 'export'),
                                           f'{family} scan={scan}')
  assert cfg.qkv_bias == (family == 'qwen2') and cfg.tie_embeddings == (family == 'qwen2')


def test_bf16_export_loads_in_bf16(hf_dir, tmp_path):
  family, path = hf_dir
  hf_models.check_bf16_export(path, family, str(tmp_path / 'bf16'))


def test_mismatches_name_the_tensor(hf_dir):
  family, path = hf_dir
  hf_config, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_config)
  wrong_vocab = dataclasses.replace(cfg, vocab_size=cfg.vocab_size + 1)
  with pytest.raises(common.ConversionError, match='model.embed_tokens.weight'):
    convert.params_from_hf(state_dict, wrong_vocab, scan=True)
  missing = {k: v for k, v in state_dict.items() if 'layers.1.mlp.up_proj' not in k}
  with pytest.raises(common.ConversionError, match=r'model\.layers\.1\.mlp\.up_proj\.weight'):
    convert.params_from_hf(missing, cfg, scan=False)
  extra = {**state_dict, 'model.layers.0.self_attn.o_proj.bias': np.zeros(64, np.float32),
           'model.rotary_emb.inv_freq': np.zeros(8, np.float32)}  # the buffer is tolerated
  with pytest.raises(common.ConversionError, match=r'o_proj\.bias'):
    convert.params_from_hf(extra, cfg, scan=True)
  other = dataclasses.replace(cfg, qkv_bias=not cfg.qkv_bias)  # the other family's layout
  with pytest.raises(common.ConversionError, match=r'q_proj\.bias'):
    convert.params_from_hf(state_dict, other, scan=True)
  params = convert.params_from_hf(state_dict, cfg, scan=False)
  params['layers_0']['mlp']['up']['kernel'] = np.zeros((1, 1), np.float32)
  with pytest.raises(common.ConversionError, match='layers_0/mlp/up/kernel'):
    convert.hf_from_params(params, cfg)


def test_unsupported_config_names_the_field():
  hf = transformers.LlamaConfig(rope_parameters={'rope_type': 'linear', 'rope_theta': 1e4,
                                                 'factor': 2.0})
  with pytest.raises(ValueError, match='rope_type'):
    convert.llm_config_from_hf(hf)
  with pytest.raises(ValueError, match='attention_bias'):
    convert.llm_config_from_hf(transformers.LlamaConfig(attention_bias=True))
  with pytest.raises(ValueError, match='model_type'):
    convert.llm_config_from_hf(transformers.GPT2Config())


def test_load_sharded_dir(hf_dir, tmp_path):
  family, path = hf_dir
  _, single = convert.load_hf_dir(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  model.save_pretrained(str(tmp_path), max_shard_size='40KB')
  assert len(list(tmp_path.glob('*.safetensors'))) > 1
  _, sharded = convert.load_hf_dir(str(tmp_path))
  assert sharded.keys() == single.keys()
  for k, v in single.items():
    np.testing.assert_array_equal(sharded[k], v)


@pytest.mark.parametrize('sharded', [False, True], ids=['single', 'indexed'])
def test_load_reads_the_weights_hf_reads(hf_dir, tmp_path, sharded):
  """Hub repos often keep other safetensors beside the model (a PEFT adapter a merged
  fine-tune ships, Mistral's consolidated.safetensors): HF loads model.safetensors or the
  index's shards only, and so must the import."""
  _, path = hf_dir
  _, want = convert.load_hf_dir(path)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  model.save_pretrained(str(tmp_path), max_shard_size='40KB' if sharded else '1GB')
  lora = {'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight':
          np.zeros((4, 64), np.float32)}
  safetensors_numpy.save_file(lora, str(tmp_path / 'adapter_model.safetensors'))
  safetensors_numpy.save_file(want, str(tmp_path / 'consolidated.safetensors'))
  _, got = convert.load_hf_dir(str(tmp_path))
  assert got.keys() == want.keys()
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize('family', ['llama', 'qwen2'])
def test_config_roundtrip(family):
  # LlamaConfig insists on hidden_size % num_heads == 0, so only qwen2 gets 3 heads.
  heads, kv_heads = (4, 2) if family == 'llama' else (3, 1)
  cfg = llm.LLMConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=heads,
                      num_kv_heads=kv_heads, mlp_dim=112, head_dim=32,
                      rope_theta=5e5, norm_eps=1e-5, qkv_bias=family == 'qwen2',
                      tie_embeddings=family == 'qwen2',
                      max_position_embeddings=32768 if family == 'qwen2' else 2048)
  hf = convert.hf_config_from_llm(cfg, family)
  assert hf.max_position_embeddings == cfg.max_position_embeddings
  assert convert.llm_config_from_hf(hf) == cfg
  with pytest.raises(ValueError, match='qkv_bias'):
    convert.hf_config_from_llm(dataclasses.replace(cfg, qkv_bias=not cfg.qkv_bias), family)


def test_qwen2_sliding_window_only_where_a_layer_slides():
  # Qwen2 checkpoints ship use_sliding_window=True with max_window_layers = num layers:
  # no layer slides, so they are full attention; one sliding layer is refused by name.
  base = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=112, use_sliding_window=True,
              sliding_window=16)
  full = transformers.Qwen2Config(max_window_layers=2, **base)
  assert convert.llm_config_from_hf(full).num_layers == 2
  with pytest.raises(UnsupportedConfig, match='layer_types'):
    convert.llm_config_from_hf(transformers.Qwen2Config(max_window_layers=1, **base))
