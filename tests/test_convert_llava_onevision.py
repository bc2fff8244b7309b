"""HF LLaVA-OneVision -> radjax VLM (`from-hf --family llava_onevision`, RadVLM's start),
verified by logits: text on a long prompt, and the image path where it is defined (one
tile: the base image that OneVision's AnyRes sequence starts with)."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from configs import radvlm  # noqa: E402
from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common  # noqa: E402
from radjax.core import workdir  # noqa: E402
from radjax.data import tokens as tokens_lib  # noqa: E402
from radjax.models import factory, llm, vlm  # noqa: E402
from radjax.train import pretrained  # noqa: E402
from tests import hf_models  # noqa: E402

VOCAB, IMAGE_ID = 320, 303  # <|endoftext|> 300, <|im_start|> 301, <|im_end|> 302, <video> 304
TILE, TOKENS = hf_models.VISION_IMAGE_SIZE, hf_models.llava_image_tokens()  # 32px, 16 tokens
PROMPT_LEN, TOL = 260, 1e-4


def _tokenizer(path) -> None:
  """A word-level Qwen2-like tokenizer (w0..w299, then Qwen2's specials and <image>,
  <video> at the ids the model has), with OneVision's chat template beside it in
  chat_template.json, where llava-hf keeps a processor's."""
  from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
  specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<image>', '<video>']
  vocab = {**{f'w{i}': i for i in range(IMAGE_ID - 3)},
           **{t: IMAGE_ID - 3 + i for i, t in enumerate(specials)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token='w0'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token='<|im_end|>', pad_token='<|endoftext|>',
      unk_token='w0').save_pretrained(path)
  (path / 'chat_template.json').write_text(
      json.dumps({'chat_template': hf_models.LLAVA_ONEVISION_CHAT_TEMPLATE}))


def _cli(*argv) -> tuple[int, str]:
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    rc = convert_cli.main([str(a) for a in argv])
  return rc, err.getvalue()


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """The tiny HF model, its directory, and the workdir `from-hf` made of it (with what the
  import wrote to stderr)."""
  root = tmp_path_factory.mktemp('onevision')
  hf = hf_models.tiny_llava_onevision(VOCAB, IMAGE_ID)
  hf.save_pretrained(root / 'hf')
  _tokenizer(root / 'hf')
  rc, err = _cli('from-hf', '--family', 'llava_onevision', '--hf_dir', root / 'hf',
                 '--out', root / 'wd')
  assert rc == 0, err
  config = workdir.load_config(str(root / 'wd'))
  return dict(hf=hf, hf_dir=root / 'hf', wd=root / 'wd', root=root, err=err, config=config,
              params=workdir.load_params(str(root / 'wd')))


def _max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def test_the_import_is_radvlms_model_in_chatml_and_says_what_it_leaves_out(imported):
  """vision_feature_layer -1 with 'full' is SigLIP's last layer, every patch; the chat
  template (no system turn unless given) is ChatML; AnyRes and image_newline are said."""
  config = imported['config']
  assert config.model.kind == 'vlm' and config.runtime.scan_layers
  cfg = factory.vlm_config(config.model)
  assert cfg.vision.variant == 'siglip' and cfg.vision.num_layers == 3
  assert (cfg.vision.select_layer, cfg.vision.keep_class_token) == (-1, False)
  assert cfg.vision.num_tokens == TOKENS and cfg.image_token_id == IMAGE_ID
  assert cfg.projector.kind == 'mlp' and cfg.llm.vocab_size == VOCAB
  assert cfg.llm.qkv_bias and not cfg.llm.tie_embeddings
  assert tuple(config.data.image_mean) == tuple(config.data.image_std) == (0.5, 0.5, 0.5)
  assert (config.data.chat_format, config.data.system_prompt) == ('chatml', '')
  tok = tokens_lib.load_tokenizer(config.data.tokenizer)
  assert tok.convert_tokens_to_ids('<image>') == IMAGE_ID
  assert not any('newline' in k for k in common.flatten(imported['params']))
  lines = [line for line in imported['err'].splitlines() if line.startswith('note:')]
  assert len(lines) == 2, imported['err']
  assert 'AnyRes' in lines[0] and 'image_newline' in lines[0]
  assert f'one {TILE}px tile ({TOKENS} tokens)' in lines[0]
  assert "'chatml' format" in lines[1] and 'You are a helpful assistant.' in lines[1]


def test_text_logits_match_hf_on_a_long_prompt_and_after_to_hf(imported, tmp_path):
  """The decoder on a 260-token prompt gives HF's text-only logits; `to-hf` writes a Llava
  that does too."""
  cfg = factory.vlm_config(imported['config'].model)
  tokens = hf_models.random_tokens(IMAGE_ID - 3, PROMPT_LEN)  # plain words, no specials
  want = hf_models.hf_logits(imported['hf'], tokens)
  model = llm.Decoder(cfg.llm, factory.runtime(imported['config'], 'llm'))
  got = hf_models.logits(model, imported['params']['llm'], tokens)
  diff = _max_diff(got, want)
  print(f'llava_onevision text max|dlogits|={diff:.2e}')
  assert diff <= TOL

  out = tmp_path / 'llava'
  rc, err = _cli('to-hf', '--workdir', imported['wd'], '--out', out)
  assert rc == 0, err
  back = transformers.LlavaForConditionalGeneration.from_pretrained(out, dtype=torch.float32)
  diff = _max_diff(hf_models.hf_logits(back, tokens), want)
  print(f'llava_onevision -> Llava text max|dlogits|={diff:.2e}')
  assert diff <= TOL


def test_image_features_are_hfs_base_tile(imported):
  """radjax's projected features of one image are HF's vision tower (hidden_states[-1]) and
  projector on that tile, the first TOKENS rows of HF's AnyRes-packed features when the
  tile is the base image of a 2x2 grid; a prompt with those features spliced in at its
  <image> tokens gives the logits of HF's decoder fed the same."""
  hf = imported['hf']
  cfg = factory.vlm_config(imported['config'].model)
  model = vlm.VLM(cfg, factory.vlm_runtime(imported['config']))
  params = imported['params']
  rng = np.random.default_rng(0)
  tiles = rng.normal(size=(5, TILE, TILE, 3)).astype(np.float32)  # base + 2x2 grid
  ours = np.asarray(model.apply({'params': params}, tiles[None, :1],
                                method=model.encode_images))[0]
  assert ours.shape == (TOKENS, cfg.llm.embed_dim)
  nchw = torch.from_numpy(tiles.transpose(0, 3, 1, 2))
  with torch.no_grad():
    hidden = hf.model.vision_tower(nchw[:1], output_hidden_states=True).hidden_states[-1]
    want = hf.model.multi_modal_projector(hidden)[0].numpy()
    packed = hf.model.get_image_features(
        pixel_values=nchw[None], image_sizes=torch.tensor([[2 * TILE, 2 * TILE]]),
        vision_feature_layer=-1, vision_feature_select_strategy='full').pooler_output[0]
  diff = _max_diff(ours, want)
  print(f'llava_onevision image features max|d|={diff:.2e}')
  assert diff <= TOL
  assert packed.shape[0] > TOKENS  # the grid and its newlines follow the base tile
  assert _max_diff(packed[:TOKENS].numpy(), want) <= TOL

  tokens = hf_models.random_tokens(IMAGE_ID - 3, 64, seed=1)
  tokens[0, 5:5 + TOKENS] = IMAGE_ID
  got = np.asarray(hf_models.vlm_logits(model, params, tokens, tiles[None, :1]))
  ids = torch.from_numpy(tokens).long()
  with torch.no_grad():
    embeds = hf.model.language_model.embed_tokens(ids)
    embeds[ids == IMAGE_ID] = torch.from_numpy(want)
    hf_logits = hf.lm_head(hf.model.language_model(inputs_embeds=embeds).last_hidden_state)
  diff = _max_diff(got, hf_logits.numpy())
  print(f'llava_onevision image prompt max|dlogits|={diff:.2e}')
  assert diff <= TOL


@pytest.mark.parametrize('field, value', [('vision_feature_layer', [-2, -1]),
                                          ('vision_feature_select_strategy', 'default'),
                                          ('projector_hidden_act', 'relu')])
def test_what_radjax_cannot_represent_is_refused(imported, tmp_path, field, value):
  """Several layers' features concatenated, SigLIP's first patch dropped ('default') and
  another projector activation have no radjax form: an error naming the field."""
  hf_dir = tmp_path / 'hf'
  shutil.copytree(imported['hf_dir'], hf_dir)
  raw = json.loads((hf_dir / 'config.json').read_text())
  raw[field] = value
  (hf_dir / 'config.json').write_text(json.dumps(raw))
  rc, err = _cli('from-hf', '--family', 'llava_onevision', '--hf_dir', hf_dir,
                 '--out', tmp_path / 'wd')
  assert rc == 2 and field in err, err
  assert not (tmp_path / 'wd').exists()


def test_init_from_the_hf_directory_gives_the_imported_parts(imported):
  """config.model.<part>.init_from=<a LLaVA-OneVision directory> reads each part as the
  import does (image_newline left out)."""
  cfgs = factory.parts_of(imported['config'].model)
  for part in factory.VLM_PARTS:
    want = common.flatten(imported['params'][part])
    got = common.flatten(pretrained._from_hf_dir(part, str(imported['hf_dir']), cfgs[part],
                                                 scan=True))
    assert got.keys() == want.keys(), part
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_radvlm_starts_from_the_imported_workdir(imported):
  """configs/radvlm.py:init=WD takes the workdir's architecture, tokenizer and every part's
  weights (restored as they are stored)."""
  source = imported['config']
  c = radvlm.get_config(f"init={imported['wd']}")
  assert factory.parts_of(c.model) == factory.parts_of(source.model)
  assert c.model.image_token_id == IMAGE_ID and c.data.tokenizer == source.data.tokenizer
  assert c.data.chat_format == 'chatml' and c.runtime.scan_layers == source.runtime.scan_layers
  pretrained.check_paths(c)
  loaders = pretrained.loaders(c, {part: part for part in factory.VLM_PARTS})
  assert loaders.keys() == set(factory.VLM_PARTS)
  for part, load in loaders.items():
    want, got = common.flatten(imported['params'][part]), common.flatten(load(None))
    assert got.keys() == want.keys(), part
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  with pytest.raises(ValueError, match='init=.*not a radjax workdir'):
    radvlm.get_config(f"init={imported['root'] / 'nowhere'}")
