"""HF LLaMA/Qwen2 <-> radjax decoder conversion, verified by logits and greedy decoding.

Tiny random HF models are built from configs (no hub access) and round-tripped
through safetensors directories.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax import convert  # noqa: E402
from radjax.convert import common, hf_io  # noqa: E402
from radjax.models import llm  # noqa: E402

PROMPT_LEN, GEN_PROMPT_LEN, NEW_TOKENS = 512, 48, 32


def _hf_model(family: str):
  torch.manual_seed(0)
  common_kw = dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, intermediate_size=112,
                   max_position_embeddings=1024, bos_token_id=None, eos_token_id=None,
                   pad_token_id=None)
  if family == 'llama':  # GQA, untied head, LLaMA-3 style rope_theta
    cfg = transformers.LlamaConfig(num_attention_heads=4, num_key_value_heads=2,
                                   rope_parameters={'rope_type': 'default',
                                                    'rope_theta': 500000.0},
                                   rms_norm_eps=1e-5, tie_word_embeddings=False, **common_kw)
    model = transformers.LlamaForCausalLM(cfg)
  else:  # q/k/v bias, tied embeddings, odd head count (head_dim 64 / 3 is not integral)
    cfg = transformers.Qwen2Config(num_attention_heads=3, num_key_value_heads=1, head_dim=16,
                                   rms_norm_eps=1e-6, tie_word_embeddings=True, **common_kw)
    model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # HF inits biases to zero; make them matter
      for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
          proj.bias.normal_(0, 0.1)
  return model.eval()


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, params, tokens):
  emb = model.apply({'params': params}, tokens, method=model.embed)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return model.apply({'params': params}, emb, positions)[0]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy(model, params, prompt, new_tokens: int):
  """KV-cache greedy decoding: prefill, then one token per step."""
  b, p = prompt.shape
  variables = {'params': params}
  key_mask = jnp.ones((b, p + new_tokens), bool)  # causality hides the unwritten slots

  def run(tokens, positions, cache, index):
    emb = model.apply(variables, tokens, method=model.embed)
    return model.apply(variables, emb, positions, cache, index, key_mask)

  cache = llm.init_cache(model.cfg, b, p + new_tokens)
  logits, aux = run(prompt, jnp.broadcast_to(jnp.arange(p), prompt.shape), cache, 0)
  first = jnp.argmax(logits[:, -1], -1).astype(jnp.int32)

  def step(carry, i):
    cache, tok = carry
    logits, aux = run(tok[:, None], jnp.full((b, 1), p + i), cache, p + i)
    return (aux['cache'], jnp.argmax(logits[:, -1], -1).astype(jnp.int32)), tok

  _, out = jax.lax.scan(step, (aux['cache'], first), jnp.arange(new_tokens))
  return out.T


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.from_numpy(tokens).long()).logits.float().numpy()


def _hf_greedy(model, prompt):
  out = model.generate(torch.from_numpy(prompt).long(), attention_mask=torch.ones(prompt.shape),
                       do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
  return out[:, prompt.shape[1]:].numpy()


@pytest.fixture(scope='module', params=['llama', 'qwen2'])
def hf_dir(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  _hf_model(request.param).save_pretrained(path)
  return request.param, path


@pytest.mark.parametrize('scan', [True, False], ids=['scanned', 'unscanned'])
def test_roundtrip_logits_and_generation(hf_dir, scan, tmp_path):
  family, path = hf_dir
  hf_config, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_config, dtype=jnp.float32, scan_layers=scan)
  assert cfg.qkv_bias == (family == 'qwen2') and cfg.tie_embeddings == (family == 'qwen2')
  params = convert.params_from_hf(state_dict, cfg, scan=scan)
  model = llm.Decoder(cfg)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (1, PROMPT_LEN), np.int32)
  want = _hf_logits(hf_model, tokens)
  got = np.asarray(_logits(model, params, tokens))
  diff = np.abs(got - want).max()
  print(f'{family} scan={scan} import max|dlogits|={diff:.2e}')
  assert diff <= 1e-4

  # Export back to an HF directory; HF must reproduce the same function.
  out_dir = str(tmp_path / 'export')
  convert.save_hf_dir(out_dir, convert.hf_config_from_llm(cfg, family, 1024),
                      convert.hf_from_params(params, cfg))
  exported = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
  assert type(exported) is type(hf_model)
  diff = np.abs(_hf_logits(exported, tokens) - got).max()
  print(f'{family} scan={scan} export max|dlogits|={diff:.2e}')
  assert diff <= 1e-4

  prompt = tokens[:, :GEN_PROMPT_LEN]
  ours = np.asarray(_greedy(model, params, prompt, NEW_TOKENS))
  np.testing.assert_array_equal(ours, _hf_greedy(exported, prompt))


def test_bf16_export_loads_in_bf16(hf_dir, tmp_path):
  family, path = hf_dir
  hf_config, state_dict = convert.load_hf_dir(path)
  cfg = convert.llm_config_from_hf(hf_config, dtype=jnp.float32)
  params = convert.params_from_hf(state_dict, cfg, scan=True)
  out_dir = str(tmp_path / 'bf16')
  convert.save_hf_dir(out_dir, convert.hf_config_from_llm(cfg, family),
                      convert.hf_from_params(params, cfg), dtype='bfloat16')
  _, saved = hf_io.load_hf_dir(out_dir)
  assert {str(v.dtype) for v in saved.values()} == {'bfloat16'}
  model = transformers.AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16)
  assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
  emb = model.get_input_embeddings().weight.detach().float().numpy()
  want = state_dict['model.embed_tokens.weight'].astype(np.float32)
  np.testing.assert_allclose(emb, want, rtol=1e-2, atol=1e-3)


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


@pytest.mark.parametrize('family', ['llama', 'qwen2'])
def test_config_roundtrip(family):
  # LlamaConfig insists on hidden_size % num_heads == 0, so only qwen2 gets 3 heads.
  heads, kv_heads = (4, 2) if family == 'llama' else (3, 1)
  cfg = llm.LLMConfig(vocab_size=300, embed_dim=64, num_layers=2, num_heads=heads,
                      num_kv_heads=kv_heads, mlp_dim=112, head_dim=32,
                      rope_theta=5e5, norm_eps=1e-5, qkv_bias=family == 'qwen2',
                      tie_embeddings=family == 'qwen2')
  assert convert.llm_config_from_hf(convert.hf_config_from_llm(cfg, family)) == cfg
  with pytest.raises(ValueError, match='qkv_bias'):
    convert.hf_config_from_llm(dataclasses.replace(cfg, qkv_bias=not cfg.qkv_bias), family)
