"""HF Llava <-> radjax VLM conversion, verified by logits, greedy decoding and the processor."""
import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from data_prep import tokenizer as tokenizer_lib  # noqa: E402
from radjax.convert import common, hf_io, llava  # noqa: E402
from radjax.convert.hf_config import UnsupportedConfig  # noqa: E402
from radjax.data import chat  # noqa: E402
from radjax.data import images as images_lib  # noqa: E402
from radjax.data import tokens as tokens_lib  # noqa: E402
from radjax.eval.decoding import generate  # noqa: E402
from radjax.models import vlm  # noqa: E402
from radjax.models.runtime import Runtime  # noqa: E402
from tests import hf_models  # noqa: E402

IMAGE_ID, EOS, VOCAB = 4, 2, 320
NUM_TOKENS = hf_models.llava_image_tokens()  # 32px images, 8px patches, CLS dropped
PROMPT_LEN, NEW_TOKENS, TOL = 520, 32, 1e-4


def _hf_model():
  return hf_models.tiny_llava(VOCAB, IMAGE_ID, EOS)


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('llava'))
  _hf_model().save_pretrained(path)
  return path


def _prompt(rng, length: int, image_starts: list[int]) -> np.ndarray:
  return hf_models.llava_prompt(rng, length, image_starts, VOCAB, IMAGE_ID)


def _export_name(name: str) -> str:
  """transformers 5 saves `vision_tower.X`; the export spells the hub's `vision_model.`."""
  return name.replace('vision_tower.', 'vision_tower.vision_model.')


@pytest.mark.parametrize('scan', [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=['scanned', 'unscanned'])  # scanned: test_convert_llm's
def test_roundtrip_logits_and_generation(hf_dir, scan, tmp_path):
  hf_config, state_dict = hf_io.load_hf_dir(hf_dir)
  cfg = llava.vlm_config_from_hf(hf_config)
  assert (cfg.vision.select_layer, cfg.vision.keep_class_token) == (-2, False)
  assert cfg.vision.num_tokens == NUM_TOKENS and cfg.image_token_id == IMAGE_ID
  assert (cfg.llm.num_kv_heads, cfg.projector.kind) == (2, 'mlp')
  params = llava.params_from_hf(state_dict, cfg, scan=scan)
  model = vlm.VLM(cfg, vlm.VLMRuntime(*(Runtime(scan_layers=scan),) * 3))
  hf_model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir)

  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  tokens = _prompt(rng, PROMPT_LEN, [5, 300])  # two images in one row
  want = hf_models.hf_llava_logits(hf_model, tokens, pixels)
  got = np.asarray(hf_models.vlm_logits(model, params, tokens, pixels[None]))
  diff = np.abs(got - want).max()
  print(f'llava scan={scan} import max|dlogits|={diff:.2e}')
  assert diff <= TOL

  out_dir = str(tmp_path / 'export')
  exported = llava.hf_from_params(params, cfg)
  assert exported.keys() == {_export_name(k) for k in state_dict}
  hf_io.save_hf_dir(out_dir, llava.hf_config_from_vlm(cfg, 'llama', bos_token_id=1,
                                                      eos_token_id=EOS, pad_token_id=0),
                    exported)
  reloaded, info = transformers.LlavaForConditionalGeneration.from_pretrained(
      out_dir, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  diff = np.abs(hf_models.hf_llava_logits(reloaded, tokens, pixels) - got).max()
  print(f'llava scan={scan} export max|dlogits|={diff:.2e}')
  assert diff <= TOL

  prompt = _prompt(rng, 40, [2])
  ours = np.asarray(generate.greedy_generate(model, params, prompt, np.ones_like(prompt, bool),
                                             pixels[None, :1], NEW_TOKENS, (EOS,)))
  out = reloaded.generate(input_ids=torch.from_numpy(prompt).long(),
                          attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                          pixel_values=torch.from_numpy(pixels[:1].transpose(0, 3, 1, 2)),
                          do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=EOS,
                          pad_token_id=EOS)
  theirs = out[:, prompt.shape[1]:].numpy()
  theirs = np.pad(theirs, ((0, 0), (0, NEW_TOKENS - theirs.shape[1])), constant_values=EOS)
  np.testing.assert_array_equal(ours, theirs)


def test_layouts_towers_and_errors(hf_dir):
  hf_config, state_dict = hf_io.load_hf_dir(hf_dir)
  cfg = llava.vlm_config_from_hf(hf_config)
  ref = common.flatten(llava.params_from_hf(state_dict, cfg, scan=True))
  # transformers 5's in-memory names (as `model.state_dict()` gives them) read the same.
  memory = {k: v.numpy() for k, v in _hf_model().state_dict().items()}
  assert any(k.startswith('model.language_model.') for k in memory)
  got = common.flatten(llava.params_from_hf(memory, cfg, scan=True))
  assert got.keys() == ref.keys()
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k])

  vision_cfg, vision_sd = llava.tower_state_dict(hf_config, state_dict, 'vision')
  assert vision_cfg.model_type == 'clip_vision_model'
  assert all(k.startswith('vision_model.') for k in vision_sd)
  text_cfg, text_sd = llava.tower_state_dict(hf_config, state_dict, 'llm')
  assert text_cfg.model_type == 'llama' and 'lm_head.weight' in text_sd
  assert 'model.layers.1.mlp.up_proj.weight' in text_sd

  name = 'multi_modal_projector.linear_2.weight'
  wrong = {**state_dict, name: np.zeros((64, 63), np.float32)}
  with pytest.raises(common.ConversionError, match=name.replace('.', r'\.')):
    llava.params_from_hf(wrong, cfg, scan=True)
  wrong = {**state_dict, 'vision_tower.encoder.layers.2.self_attn.q_proj.weight':
           np.zeros((48, 47), np.float32)}
  with pytest.raises(common.ConversionError,
                     match=r'vision_tower\.vision_model\.encoder\.layers\.2\.self_attn'):
    llava.params_from_hf(wrong, cfg, scan=False)
  missing = {k: v for k, v in state_dict.items() if 'layers.1.mlp.up_proj' not in k}
  with pytest.raises(common.ConversionError, match=r'language model.*layers\.1\.mlp\.up_proj'):
    llava.params_from_hf(missing, cfg, scan=True)
  with pytest.raises(common.ConversionError, match='image_newline'):
    llava.params_from_hf({**state_dict, 'image_newline': np.zeros(64)}, cfg, scan=True)


def test_config_support():
  hf = _hf_model().config
  cfg = llava.vlm_config_from_hf(hf)
  back = llava.vlm_config_from_hf(llava.hf_config_from_vlm(cfg, 'llama'))
  assert back == cfg
  full = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, keep_class_token=True))
  exported = llava.hf_config_from_vlm(full, 'llama')
  assert exported.vision_feature_select_strategy == 'full'
  assert exported.image_seq_length == NUM_TOKENS + 1
  for field, value in (('projector_hidden_act', 'gelu_pytorch_tanh'),
                       ('vision_feature_layer', [-2, -1]),
                       ('multimodal_projector_bias', False)):
    bad = transformers.LlavaConfig(**{**hf.to_dict(), field: value})
    with pytest.raises(UnsupportedConfig, match=field):
      llava.vlm_config_from_hf(bad)
  siglip = transformers.LlavaConfig(vision_config=transformers.SiglipVisionConfig(),
                                    text_config=hf.text_config,
                                    vision_feature_select_strategy='default')
  with pytest.raises(UnsupportedConfig, match='vision_feature_select_strategy'):
    llava.vlm_config_from_hf(siglip)
  linear = dataclasses.replace(cfg, projector=dataclasses.replace(cfg.projector, kind='linear'))
  with pytest.raises(UnsupportedConfig, match='kind'):
    llava.hf_config_from_vlm(linear, 'llama')


@pytest.fixture(scope='module')
def tokenizer_path(tmp_path_factory):
  texts = ['The heart is normal in size. No pleural effusion or pneumothorax.',
           'Describe the findings. Mild cardiomegaly, lungs are clear.'] * 4
  path = str(tmp_path_factory.mktemp('tok') / 'tokenizer.json')
  tokenizer_lib.save_tokenizer(tokenizer_lib.train_tokenizer(300, texts), path)
  return path


@pytest.mark.parametrize('variant,num_tokens', [('clip', 16), ('clip', 17), ('siglip', 16)])
def test_processor_matches_radjax(tokenizer_path, variant, num_tokens, tmp_path):
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
  out = str(tmp_path / 'proc')
  tokenizer = tokens_lib.load_tokenizer(tokenizer_path)
  llava.save_processor(out, tokenizer, 32, mean, std, num_tokens, variant,
                       chat.chat_template(chat.RADJAX))
  processor = transformers.LlavaProcessor.from_pretrained(out)

  buf = io.BytesIO()  # grey and not square: exercises convert-to-RGB and the plain resize
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 61), np.uint8), 'L').save(
      buf, 'PNG')
  png = buf.getvalue()
  instruction = 'Describe the findings.'
  messages = [{'role': 'user', 'content': [{'type': 'image'},
                                           {'type': 'text', 'text': instruction}]}]
  text = processor.apply_chat_template(messages, add_generation_prompt=True)
  batch = processor(images=Image.open(io.BytesIO(png)), text=text, return_tensors='np')

  encoder = chat.ConversationEncoder(tokenizer, chat.RADJAX, num_tokens)
  ids = batch['input_ids'][0]
  assert (ids == encoder.image_id).sum() == num_tokens
  assert ids.tolist() == encoder.prompt([{'role': 'user', 'text': instruction}], 1)

  want = images_lib.preprocess({'kind': '2d', 'format': 'png', 'data': png}, size=32,
                               num_channels=3, mean=mean, std=std, record_id='x')
  got = batch['pixel_values'][0].transpose(1, 2, 0)
  diff = np.abs(got - want).max()
  print(f'processor {variant} max|dpixel|={diff:.2e}')
  assert got.shape == want.shape and diff <= 1e-5


def test_a_llava_tied_at_its_top_level_imports_tied():
  from radjax.convert import llava
  # transformers 5 ties a Llava's head by the top-level flag (LlavaConfig.__post_init__
  # only copies a True text-config flag up), so a checkpoint may store no lm_head.
  hf = transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(hidden_size=48, num_attention_heads=3,
                                                  intermediate_size=80, num_hidden_layers=2),
      text_config=transformers.LlamaConfig(hidden_size=64, num_attention_heads=4,
                                           intermediate_size=112, num_hidden_layers=2,
                                           vocab_size=300, tie_word_embeddings=False),
      tie_word_embeddings=True)
  assert llava.vlm_config_from_hf(hf).llm.tie_embeddings
