"""HF LLaVA-OneVision <-> radjax VLM (`from-hf --family llava_onevision`, RadVLM's start,
and `to-hf` back), verified by logits: text on a long prompt, and prompts holding an image
of either orientation read through AnyRes (tiles, unpadding, scaling down, newlines) from
the image file to the logits."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from configs import radvlm  # noqa: E402
from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import common  # noqa: E402
from radjax.core import workdir  # noqa: E402
from radjax.data import processors  # noqa: E402
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


def test_the_import_is_radvlms_model_in_chatml_with_anyres(imported):
  """vision_feature_layer -1 with 'full' is SigLIP's last layer, every patch; the pinpoints
  and anyres_max_2 are the AnyRes knobs and image_newline the projector's; the chat
  template (no system turn unless given) is ChatML."""
  config = imported['config']
  assert config.model.kind == 'vlm' and config.runtime.scan_layers
  cfg = factory.vlm_config(config.model)
  assert cfg.vision.variant == 'siglip' and cfg.vision.num_layers == 3
  assert (cfg.vision.select_layer, cfg.vision.keep_class_token) == (-1, False)
  assert cfg.vision.num_tokens == TOKENS and cfg.image_token_id == IMAGE_ID
  assert cfg.projector.kind == 'mlp' and cfg.llm.vocab_size == VOCAB
  assert cfg.llm.qkv_bias and not cfg.llm.tie_embeddings
  assert cfg.anyres_grids == tuple((r, c) for r in (1, 2, 3) for c in (1, 2, 3))
  assert cfg.anyres_max_tiles == 2 and cfg.projector.image_newline
  newline = imported['hf'].model.image_newline.detach().numpy()
  np.testing.assert_array_equal(imported['params']['projector']['image_newline'], newline)
  assert tuple(config.data.image_mean) == tuple(config.data.image_std) == (0.5, 0.5, 0.5)
  assert (config.data.chat_format, config.data.system_prompt) == ('chatml', '')
  tok = tokens_lib.load_tokenizer(config.data.tokenizer)
  assert tok.convert_tokens_to_ids('<image>') == IMAGE_ID
  lines = [line for line in imported['err'].splitlines() if line.startswith('note:')]
  assert len(lines) == 1, imported['err']
  assert "'chatml' format" in lines[0] and 'You are a helpful assistant.' in lines[0]


def test_text_logits_match_hf_on_a_long_prompt_and_after_to_hf(imported, tmp_path):
  """The decoder on a 260-token prompt gives HF's text-only logits; `to-hf` writes a
  LLaVA-OneVision that does too."""
  cfg = factory.vlm_config(imported['config'].model)
  tokens = hf_models.random_tokens(IMAGE_ID - 3, PROMPT_LEN)  # plain words, no specials
  want = hf_models.hf_logits(imported['hf'], tokens)
  model = llm.Decoder(cfg.llm, factory.runtime(imported['config'], 'llm'))
  got = hf_models.logits(model, imported['params']['llm'], tokens)
  diff = _max_diff(got, want)
  print(f'llava_onevision text max|dlogits|={diff:.2e}')
  assert diff <= TOL

  out = tmp_path / 'onevision'
  rc, err = _cli('to-hf', '--workdir', imported['wd'], '--out', out)
  assert rc == 0, err
  back = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(
      out, dtype=torch.float32)
  diff = _max_diff(hf_models.hf_logits(back, tokens), want)
  print(f'llava_onevision -> to-hf text max|dlogits|={diff:.2e}')
  assert diff <= TOL
  # AutoProcessor reads the video processor's fields first (then needs torchvision, not
  # installed here): the export has them, as save_pretrained writes them.
  from transformers.video_processing_utils import BaseVideoProcessor
  video, _ = BaseVideoProcessor.get_video_processor_dict(str(out))
  assert video['video_processor_type'] == 'LlavaOnevisionVideoProcessor'


def _film(height: int, width: int, path) -> dict:
  """A random RGB PNG written to `path`, as a record's image."""
  x = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), np.uint8)
  Image.fromarray(x).save(path)
  return {'data': path.read_bytes(), 'format': 'png', 'kind': '2d'}


def _hf_image_logits(hf, image_path, tokens, mean, std):
  """HF's logits for `tokens` with the image read by LLaVA-OneVision's own image processor."""
  from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
  )
  proc = LlavaOnevisionImageProcessorPil(
      size={'height': TILE, 'width': TILE}, image_grid_pinpoints=hf.config.image_grid_pinpoints,
      image_mean=list(mean), image_std=list(std))
  pixels = proc(Image.open(image_path).convert('RGB'), return_tensors='pt')
  with torch.no_grad():
    return hf(input_ids=torch.from_numpy(tokens).long(), pixel_values=pixels['pixel_values'],
              image_sizes=pixels['image_sizes']).logits.numpy()


@pytest.mark.parametrize('height, width', [(45, 70), (100, 37)])
def test_image_prompts_match_hf_through_anyres(imported, tmp_path, height, width):
  """A long prompt with one image, from the PNG through radjax's AnyRes slots to the
  logits, gives the logits HF's processor and model give; the wide film's map is scaled
  down (anyres_max_2), the tall one's only unpadded."""
  config = imported['config']
  cfg = factory.vlm_config(config.model)
  model = vlm.VLM(cfg, factory.vlm_runtime(config))
  from radjax.data import anyres
  spec = anyres.AnyRes(tile=TILE, side=cfg.vision.image_size // cfg.vision.patch_size,
                       grids=cfg.anyres_grids, max_tiles=cfg.anyres_max_tiles)
  slots = processors.TileSlots(spec, num_channels=3, max_images=1,
                               mean=tuple(config.data.image_mean),
                               std=tuple(config.data.image_std))
  path = tmp_path / 'film.png'
  arrays = slots({'id': 'film', 'images': [_film(height, width, path)]}, None)
  (count,) = processors.image_token_counts(arrays)
  assert TOKENS < count < spec.max_tokens
  tokens = hf_models.random_tokens(IMAGE_ID - 3, 200 + count, seed=1)
  tokens[0, 7:7 + count] = IMAGE_ID
  got = model.apply({'params': imported['params']}, tokens, arrays['images'][None],
                    tile_index=arrays['tile_index'][None],
                    tile_weight=arrays['tile_weight'][None])[0]
  want = _hf_image_logits(imported['hf'], path, tokens, config.data.image_mean,
                          config.data.image_std)
  diff = _max_diff(got, want)
  print(f'llava_onevision {height}x{width} image prompt max|dlogits|={diff:.2e}')
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
  import does (the projector with its image_newline)."""
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


def test_a_projector_without_anyres_starts_from_it_without_the_newline(imported, caplog):
  """init_from into a one-tile projector (anyres_grids empty) takes the two linears and
  says it leaves image_newline out."""
  import dataclasses
  cfg = dataclasses.replace(factory.parts_of(imported['config'].model)['projector'],
                            image_newline=False)
  with caplog.at_level('WARNING'):
    got = common.flatten(pretrained._from_hf_dir('projector', str(imported['hf_dir']), cfg,
                                                 scan=True))
  want = common.flatten(imported['params']['projector'])
  assert set(got) == set(want) - {'image_newline'}
  for k in got:
    np.testing.assert_array_equal(got[k], want[k])
  assert 'image_newline is left out' in caplog.text


def test_the_imported_workdir_builds_its_task_as_it_is(imported):
  """`--mode=generate`, `--mode=eval` and the web demo read the workdir's own config.json
  (configs/workdir.py): its task builds, reading images through AnyRes, which neither
  crops nor jitters (LLaVA-OneVision's processor)."""
  from radjax import run
  task = run.make_task(imported['config'])
  assert isinstance(task.image_slots, processors.TileSlots)
  assert imported['config'].data.augment is False
