"""config.model.<tower>.init_from: HF directories and workdirs, vocab growth, errors."""
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax import run as run_lib  # noqa: E402
from radjax.convert import common  # noqa: E402
from radjax.core import workdir  # noqa: E402
from tests.conftest import build_experiment, tiny_config  # noqa: E402

HF_VOCAB = 2000  # the demo tokenizer has 2048 ids: init_from must grow the vocab


@pytest.fixture(scope='module')
def hf_llama(tmp_path_factory):
  """A random HF LLaMA with the tiny config's decoder shape and a smaller vocab."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=HF_VOCAB, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, rms_norm_eps=1e-5,
                                 tie_word_embeddings=False)
  path = str(tmp_path_factory.mktemp('hf') / 'llama')
  transformers.LlamaForCausalLM(cfg).save_pretrained(path)
  return path, transformers.LlamaForCausalLM.from_pretrained(path).state_dict()


def _llm_params(config):
  return build_experiment(config).state.params


def test_llm_from_hf_dir_grows_vocab(demo_data, hf_llama):
  path, sd = hf_llama
  scratch = build_experiment(tiny_config(demo_data)).state.params
  config = tiny_config(demo_data)
  config.model.llm.init_from = path
  parts = build_experiment(config)
  params = parts.state.params
  emb = np.asarray(params['llm']['embedder']['embedding'])
  want = sd['model.embed_tokens.weight'].numpy()
  np.testing.assert_array_equal(emb[:HF_VOCAB], want)
  np.testing.assert_allclose(emb[HF_VOCAB:], np.broadcast_to(want.mean(0), (48, 32)), atol=1e-6)
  head = np.asarray(params['llm']['lm_head']['kernel'])
  np.testing.assert_array_equal(head[:, :HF_VOCAB], sd['lm_head.weight'].numpy().T)
  q = np.asarray(params['llm']['layers']['attn']['q']['kernel'])  # [layers, embed, heads, hd]
  np.testing.assert_array_equal(q[1].reshape(32, 32), sd['model.layers.1.self_attn.q_proj.weight']
                                .numpy().T)
  # The other towers are initialised exactly as a run from scratch would.
  for name in ('vision', 'projector'):
    for a, b in zip(jax.tree.leaves(params[name]), jax.tree.leaves(scratch[name])):
      np.testing.assert_array_equal(a, b)
  # Loaded leaves keep the shardings a scratch state would have.
  llm_sh = parts.state_shardings.params['llm']['embedder']['embedding']
  assert params['llm']['embedder']['embedding'].sharding == llm_sh


def test_llm_from_workdir_both_layouts(demo_data, tmp_path, hf_llama, caplog):
  config = tiny_config(demo_data)
  config.model.llm.init_from = hf_llama[0]
  source = _llm_params(config)
  wd = str(tmp_path / 'wd')
  workdir.save_params(wd, config, source)
  with caplog.at_level('WARNING'):
    workdir.load_params(wd)
  # orbax reading the item directory warned on every healthy read that it had no metadata
  assert 'Metadata file does not exist' not in caplog.text
  for scan in (True, False):
    target = tiny_config(demo_data)
    target.runtime.scan_layers = scan
    target.model.llm.init_from = wd
    got = _llm_params(target)['llm']
    if scan:
      np.testing.assert_array_equal(got['layers']['mlp']['down']['kernel'],
                                    source['llm']['layers']['mlp']['down']['kernel'])
    else:  # converted through the HF layout on the host
      for i in range(2):
        np.testing.assert_array_equal(got[f'layers_{i}']['mlp']['down']['kernel'],
                                      source['llm']['layers']['mlp']['down']['kernel'][i])
    np.testing.assert_array_equal(got['embedder']['embedding'],
                                  source['llm']['embedder']['embedding'])


def test_mismatch_names_the_field(demo_data, hf_llama):
  config = tiny_config(demo_data)
  config.model.llm.num_kv_heads = 4
  config.model.llm.init_from = hf_llama[0]
  with pytest.raises(common.ConversionError, match='config.model.llm.num_kv_heads=4'):
    _llm_params(config)
  config = tiny_config(demo_data)
  config.model.llm.vocab_size = 1000
  config.model.llm.init_from = hf_llama[0]
  with pytest.raises(ValueError, match='vocab_size=1000'):  # the tokenizer has 2048
    _llm_params(config)
  config = tiny_config(demo_data)
  config.model.vision.init_from = hf_llama[0]
  with pytest.raises(ValueError, match='model_type'):
    _llm_params(config)


def test_vision_from_hf_clip_dir(demo_data, tmp_path):
  from radjax.convert import vit as vit_convert
  from radjax.models import factory
  torch.manual_seed(1)
  hf_cfg = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         image_size=32, patch_size=8, hidden_act='quick_gelu',
                                         layer_norm_eps=1e-5)
  path = str(tmp_path / 'clip')
  transformers.CLIPVisionModel(hf_cfg).save_pretrained(path)
  config = tiny_config(demo_data)
  config.model.vision.init_from = path
  got = _llm_params(config)['vision']
  sd = {k: v.numpy() for k, v in transformers.CLIPVisionModel.from_pretrained(path)
        .state_dict().items()}
  want = vit_convert.params_from_hf(sd, factory.vision_config(config.model), scan=True)
  # select_layer -2: the last HF layer is kept (for export), in the one stack
  assert got['layers']['fc1']['kernel'].shape[0] == 2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  pos = 'embeddings.position_embedding.weight'  # v5 keeps no vision_model. prefix in memory
  np.testing.assert_array_equal(got['pos_embed'], sd.get(pos, sd.get('vision_model.' + pos)))


def test_stage2_starts_every_part_from_the_stage1_workdir(demo_data, tmp_path):
  stage1 = tiny_config(demo_data)
  stage1.seed = 7
  source = _llm_params(stage1)
  wd = str(tmp_path / 'stage1')
  workdir.save_params(wd, stage1, source)
  stage2 = tiny_config(demo_data)  # seed 0: a fresh init would differ everywhere
  for part in ('llm', 'vision', 'projector'):
    stage2.model[part].init_from = wd
  got = _llm_params(stage2)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(source)):
    np.testing.assert_array_equal(a, b)
  stage2.model.projector.kind = 'linear'
  with pytest.raises(ValueError, match=r"holds a projector of kind 'mlp'.*kind='linear'"):
    _llm_params(stage2)
  # Stage 2 given stage 1's own dir as --workdir would resume stage 1 and train over it.
  stage2.model.projector.kind = 'mlp'
  before = sorted(os.listdir(wd)), open(os.path.join(wd, 'config.json')).read()
  with pytest.raises(ValueError, match=r"config\.model\.vision\.init_from='.*stage1' is the "
                                       '--workdir of this run'):
    run_lib.main(stage2, os.path.join(str(tmp_path), '.', 'stage1'), 'train')
  assert (sorted(os.listdir(wd)), open(os.path.join(wd, 'config.json')).read()) == before


def test_grow_vocab_starts_new_rows_and_head_columns_at_the_mean():
  from radjax.convert import vocab
  rng = np.random.default_rng(0)
  table, kernel = rng.normal(size=(5, 3)), rng.normal(size=(3, 5))  # (vocab, E), (E, vocab)
  out = vocab.grow_vocab({'embedder': {'embedding': table}, 'lm_head': {'kernel': kernel}}, 8)
  np.testing.assert_array_equal(out['lm_head']['kernel'][:, :5], kernel)
  np.testing.assert_allclose(out['lm_head']['kernel'][:, 5:],
                             np.repeat(kernel.mean(1, keepdims=True), 3, axis=1))
  np.testing.assert_allclose(out['embedder']['embedding'][5:],
                             np.repeat(table.mean(0, keepdims=True), 3, axis=0))
