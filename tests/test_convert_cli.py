"""`python -m radjax.convert from-hf / to-hf` for every family: HF dir -> workdir -> HF dir.

Only the CLI converts here. The workdir is an ordinary radjax workdir: its config and
params give HF's outputs, and `to-hf` gives back an HF model with the original's outputs.
(test_convert_*.py check each family's conversion in depth, in memory.)
"""
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from radjax.convert import __main__ as convert_cli  # noqa: E402
from radjax.convert import hf_io  # noqa: E402
from radjax.core import workdir  # noqa: E402
from radjax.data import chat  # noqa: E402
from radjax.models import factory, llm, vit, vlm  # noqa: E402
from tests import hf_models  # noqa: E402

PROMPT_LEN, TOL = 512, 1e-4
LLAVA_IMAGE_ID, LLAVA_VOCAB = 4, 320
# family -> (the tiny HF model, extra `from-hf` flags). --unscanned once per model kind.
CASES = {
    # A context length other than to-hf's default (4096), as Qwen2's 32768.
    'llama': (lambda: hf_models.tiny_llama(vocab_size=300, seed=3, eos_token_id=2,
                                           bos_token_id=1, pad_token_id=0,
                                           max_position_embeddings=32768), ()),
    'qwen2': (hf_models.tiny_qwen2, ('--unscanned',)),  # odd head count, tied embeddings
    'gpt_neox': (lambda: hf_models.tiny_gpt_neox('parallel'), ()),  # partial rotary
    'clip_vision': (hf_models.tiny_clip_vision, ()),
    'siglip_vision': (hf_models.tiny_siglip_vision, ('--unscanned',)),
    'llava': (lambda: hf_models.tiny_llava(LLAVA_VOCAB, LLAVA_IMAGE_ID), ()),
    # Other tower mixes a user may bring: SigLIP + Qwen2, CLIP + GPT-NeoX (LLM-CXR's decoder).
    'llava/siglip_qwen2': (lambda: hf_models.tiny_llava(LLAVA_VOCAB, LLAVA_IMAGE_ID,
                                                        vision='siglip', text='qwen2'),
                           ('--unscanned',)),
    'llava/clip_gpt_neox': (lambda: hf_models.tiny_llava(LLAVA_VOCAB, LLAVA_IMAGE_ID,
                                                         text='gpt_neox'), ()),
}


def _tokenizer_json(path: str, vocab_size: int, image_id: int | None = None) -> None:
  """A word-level tokenizer over ids 0..vocab_size-1 with <pad>/<s>/</s> at 0/1/2 (and
  <image> at image_id)."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {'<pad>': 0, '<s>': 1, '</s>': 2, **{f'w{i}': i for i in range(3, vocab_size)
                                               if i != image_id}}
  if image_id is not None:
    vocab['<image>'] = image_id
  tok = Tokenizer(models.WordLevel(vocab, unk_token='w3'))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.save(path)


def _cli(*argv) -> None:
  assert convert_cli.main([str(a) for a in argv]) == 0


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  """family -> dict(hf=original model, wd=workdir, config, params, back=re-exported model),
  each converted once through `from-hf` and `to-hf`."""
  cache = {}

  def get(family: str) -> dict:
    if family not in cache:
      build, flags = CASES[family]
      root = tmp_path_factory.mktemp(family.replace('/', '_'))
      hf_dir, wd, out = root / 'hf', root / 'wd', root / 'out'
      hf = build()
      hf.save_pretrained(hf_dir)
      if family == 'llama':
        _tokenizer_json(str(hf_dir / 'tokenizer.json'), 300)
      _cli('from-hf', '--family', family.split('/')[0], '--hf_dir', hf_dir, '--out', wd,
           *flags)
      _cli('to-hf', '--workdir', wd, '--out', out)
      config = workdir.load_config(str(wd))
      assert config.runtime.scan_layers == ('--unscanned' not in flags)
      assert config.runtime.dtype == 'float32'  # the HF checkpoints are float32
      back = getattr(transformers, transformers.AutoConfig.from_pretrained(out)
                     .architectures[0]).from_pretrained(out, dtype=torch.float32)
      cache[family] = dict(hf=hf, wd=wd, out=out, config=config, back=back,
                           params=workdir.load_params(str(wd)))
    return cache[family]

  return get


def _max_diff(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


@pytest.mark.parametrize('family', ['llama', pytest.param('qwen2', marks=pytest.mark.slow),
                                    pytest.param('gpt_neox', marks=pytest.mark.slow)])
def test_llm_round_trip(converted, family):
  c = converted(family)
  assert c['config'].model.kind == 'llm'
  cfg = factory.llm_config(c['config'].model)
  rt = factory.runtime(c['config'], 'llm')
  assert rt.dtype == jnp.float32
  assert ('layers_0' in c['params']) == (not rt.scan_layers)
  tokens = hf_models.random_tokens(cfg.vocab_size, PROMPT_LEN)
  want = hf_models.hf_logits(c['hf'], tokens)
  got = hf_models.logits(llm.Decoder(cfg, rt), c['params'], tokens)
  diff, back_diff = _max_diff(got, want), _max_diff(hf_models.hf_logits(c['back'], tokens), want)
  print(f'{family} workdir max|dlogits|={diff:.2e} to-hf max|dlogits|={back_diff:.2e}')
  assert diff <= TOL and back_diff <= TOL
  assert type(c['back']) is type(c['hf'])
  assert c['back'].config.tie_word_embeddings == c['hf'].config.tie_word_embeddings
  # The context length comes back (the tiny models' 1024; llama's 32768), not a default.
  positions = c['hf'].config.max_position_embeddings
  assert positions != 4096 and c['config'].model.llm.max_position_embeddings == positions
  assert c['back'].config.max_position_embeddings == positions


def test_llama_workdir_generates_like_hf(converted):
  c = converted('llama')
  tok = transformers.AutoTokenizer.from_pretrained(c['out'])
  assert tok.decode(tok.encode('w5 w6', add_special_tokens=False)) == 'w5 w6'
  # A plain encode starts with <s>, as radjax's decoder prompts and LLaMA's tokenizers do.
  assert tok('w10 w11 w12 w13')['input_ids'] == [1, 10, 11, 12, 13]

  # --mode=generate on the imported workdir: greedy text equals HF's.
  from radjax import run
  config = workdir.load_config(str(c['wd']))
  with config.unlocked():
    config.eval.max_new_tokens = 12
  assert config.data.chat_format == 'none'  # an imported decoder continues plain text
  # Its task is the decoder's own (--mode=eval builds it from config.task).
  assert config.task == 'lm' and run.make_task(config).name == 'lm'
  text = run.generate(config, str(c['wd']), [], prompt='w10 w11 w12 w13')[0]
  prompt = np.asarray([[1, 10, 11, 12, 13]], np.int32)  # <s> first, as every sequence
  hf_ids = hf_models.hf_greedy(c['hf'], prompt, 12)[0].tolist()
  if 2 in hf_ids:
    hf_ids = hf_ids[:hf_ids.index(2)]
  assert text == ' '.join(f'w{i}' for i in hf_ids)


def test_a_bos_the_tokenizer_never_adds_stays_out_of_prompts(tmp_path):
  """GPT-NeoX's tokenizers (Pythia, dolly-v2) name a BOS but never add it: the imported
  workdir prompts as HF's `tokenizer(prompt)` does, so --mode=generate equals HF's."""
  from radjax import run
  hf = hf_models.tiny_gpt_neox('parallel')
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(hf_dir)
  _tokenizer_json(str(tmp_path / 'tok.json'), 300)
  tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tok.json'),
                                             bos_token='<s>', eos_token='</s>')
  tok.save_pretrained(hf_dir)
  assert tok('w10 w11')['input_ids'] == [10, 11]
  _cli('from-hf', '--family', 'gpt_neox', '--hf_dir', hf_dir, '--out', tmp_path / 'wd')
  config = workdir.load_config(str(tmp_path / 'wd'))
  assert config.data.chat_format == 'text'
  with config.unlocked():
    config.eval.max_new_tokens = 8
  text = run.generate(config, str(tmp_path / 'wd'), [], prompt='w10 w11 w12 w13')[0]
  hf_ids = hf_models.hf_greedy(hf, np.asarray([[10, 11, 12, 13]], np.int32), 8)[0].tolist()
  if 2 in hf_ids:
    hf_ids = hf_ids[:hf_ids.index(2)]
  assert text == ' '.join(f'w{i}' for i in hf_ids)


def test_extra_eos_ids_of_the_generation_config_stop_generation_both_ways(tmp_path):
  """Llama-3-Instruct ends turns at <|eot_id|>, listed beside its EOS in
  generation_config.json's eos_token_id: the imported workdir stops where HF stops, and
  to-hf writes the id back."""
  import json

  from radjax import run
  hf = hf_models.tiny_llama()
  hf_dir = tmp_path / 'hf'
  hf.save_pretrained(hf_dir)
  _tokenizer_json(str(hf_dir / 'tokenizer.json'), 300)
  prompt = np.asarray([[1, 10, 11, 12, 13]], np.int32)
  free = hf_models.hf_greedy(hf, prompt, 12)[0].tolist()
  free = free[:free.index(2)] if 2 in free else free
  k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
  (hf_dir / 'generation_config.json').write_text(json.dumps(
      {'bos_token_id': 1, 'eos_token_id': [2, free[k]]}))
  _cli('from-hf', '--family', 'llama', '--hf_dir', hf_dir, '--out', tmp_path / 'wd')
  config = workdir.load_config(str(tmp_path / 'wd'))
  assert tuple(config.eval.stop_tokens) == (f'w{free[k]}',)
  with config.unlocked():
    config.eval.max_new_tokens = 12
  text = run.generate(config, str(tmp_path / 'wd'), [], prompt='w10 w11 w12 w13')[0]
  assert text == ' '.join(f'w{i}' for i in free[:k])
  _cli('to-hf', '--workdir', tmp_path / 'wd', '--out', tmp_path / 'out')
  written = json.loads((tmp_path / 'out' / 'generation_config.json').read_text())
  assert free[k] in written['eos_token_id'] and 2 in written['eos_token_id']
  # and the workdir's budget: HF's generate(**inputs) stopped at its own 20 new tokens.
  assert written['max_new_tokens'] == workdir.load_config(str(tmp_path / 'wd')).eval[
      'max_new_tokens'] == 96
  assert not written['do_sample'] and written['repetition_penalty'] == 1.0


@pytest.mark.parametrize('decoding, want', [
    ('greedy', {}),
    ('sample', {'do_sample': True, 'temperature': 0.7, 'top_k': 0, 'top_p': 0.9}),
    ('beam', {'num_beams': 3, 'length_penalty': 1.0, 'early_stopping': 'never'}),
])
def test_the_generation_config_decodes_as_eval_does(decoding, want):
  """XrayGPT samples with top_p 0.9: the export said do_sample false. top_k 0 is written
  (HF's default would be 50); HF accepts every field set."""
  from radjax.convert import export
  from radjax.core import defaults
  ev = defaults.get_config().eval
  ev.decoding, ev.temperature, ev.top_p, ev.num_beams = decoding, 0.7, 0.9, 3
  ev.early_stopping, ev.max_new_tokens = 'never', 300
  fields = export.decoding_fields(ev)
  assert fields == {'max_new_tokens': 300, 'repetition_penalty': 1.0, **want}
  transformers.GenerationConfig(**fields).validate(strict=True)


def test_the_generation_config_takes_every_early_stopping_eval_takes():
  """--config.eval.early_stopping=True beam-searches as HF's True, but the export stopped on
  a KeyError: it knew the lower-case strings only."""
  from radjax.convert import export
  from radjax.core import defaults
  from radjax.eval.decoding import generate as generate_lib
  ev = defaults.get_config().eval
  ev.decoding = 'beam'
  for value, want in [('True', True), ('FALSE', False), ('Never', 'never'), ('true', True)]:
    ev.early_stopping = value
    assert generate_lib.config_from_eval(ev, (2,), 0).early_stopping == want
    got = export.decoding_fields(ev)['early_stopping']
    assert got == want and type(got) is type(want), (value, got)


def test_an_export_without_a_tokenizer_names_no_token_ids(tmp_path):
  """A weights-only HF dir (bos 5, eos 7, no tokenizer) round-trips with no bos/eos ids in
  config.json, not transformers' class defaults (LLaMA's 1/2), where generate() would stop."""
  import json
  hf_models.tiny_llama(vocab_size=300, bos_token_id=5, eos_token_id=7).save_pretrained(
      tmp_path / 'hf')
  _cli('from-hf', '--family', 'llama', '--hf_dir', tmp_path / 'hf', '--out', tmp_path / 'wd')
  _cli('to-hf', '--workdir', tmp_path / 'wd', '--out', tmp_path / 'out')
  written = json.loads((tmp_path / 'out' / 'config.json').read_text())
  assert [written.get(k) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')] == [
      None] * 3
  back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'out')
  assert back.generation_config.eos_token_id is None


@pytest.mark.parametrize('eos', [7, [7], [2, 7], 2, [2]])
def test_a_generation_config_eos_that_is_not_the_tokenizers_is_a_stop_token(tmp_path, eos):
  """A Llama-3-Instruct fine-tune's generation_config.json may name <|eot_id|> alone
  (eos_token_id: 128009) beside a tokenizer whose EOS is <|end_of_text|>: HF stops there,
  so the imported workdir must too, one id or several."""
  import json
  import types

  from radjax.core import defaults
  _tokenizer_json(str(tmp_path / 'tokenizer.json'), 300)
  (tmp_path / 'generation_config.json').write_text(json.dumps({'eos_token_id': eos}))
  config = defaults.get_config()
  config.data.tokenizer = str(tmp_path / 'tokenizer.json')
  convert_cli._import_stop_tokens(config, None, str(tmp_path),
                                  types.SimpleNamespace(eos_token_id=2))
  assert tuple(config.eval.stop_tokens) == (() if eos in (2, [2]) else ('w7',))


@pytest.mark.parametrize('family', ['clip_vision',
                                    pytest.param('siglip_vision', marks=pytest.mark.slow)])
def test_vision_round_trip(converted, family):
  c = converted(family)
  assert c['config'].model.kind == 'vision'
  cfg = factory.vision_config(c['config'].model)
  assert (cfg.select_layer, cfg.keep_class_token) == (-1, False)
  variant = cfg.variant
  images = np.random.default_rng(0).normal(
      size=(2, hf_models.VISION_IMAGE_SIZE, hf_models.VISION_IMAGE_SIZE, 3)).astype(np.float32)
  hidden, last, pooled = hf_models.hf_vision_outputs(c['hf'], images)
  # Features: the last layer's output (CLIP: patches only); `pooled`: CLIP's
  # post_layernorm(CLS), SigLIP's last_hidden_state (post_layernorm of every token).
  feats, aux = vit.ViT(cfg, factory.runtime(c['config'], 'vision')).apply(
      {'params': c['params']}, images)
  want_pooled = pooled if variant == 'clip' else last
  diff = max(_max_diff(feats, hf_models.hf_vision_features(hidden, variant, -1)),
             _max_diff(aux['pooled'], want_pooled))
  hidden2, last2, pooled2 = hf_models.hf_vision_outputs(c['back'], images)
  back_diff = max(_max_diff(h2, h) for h2, h in zip(hidden2, hidden))
  back_diff = max(back_diff, _max_diff(last2, last))
  if variant == 'clip':
    back_diff = max(back_diff, _max_diff(pooled2, pooled))
  else:  # SigLIP's contrastive pooling head is not imported, so not exported
    assert c['back'].config.vision_use_head is False and pooled2 is None
  print(f'{family} workdir max|dfeat|={diff:.2e} to-hf max|dhidden|={back_diff:.2e}')
  assert diff <= TOL and back_diff <= TOL
  assert type(c['back']) is type(c['hf']) and len(hidden2) == len(hidden)


def _llava_diffs(c) -> tuple[float, float]:
  """Max |dlogits| vs the original HF Llava of (the workdir's params in radjax, the
  re-exported HF model), on a 520-token prompt with two images."""
  rng = np.random.default_rng(0)
  size = hf_models.VISION_IMAGE_SIZE
  pixels = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  tokens = hf_models.llava_prompt(rng, PROMPT_LEN + 8, [5, 300], LLAVA_VOCAB, LLAVA_IMAGE_ID)
  want = hf_models.hf_llava_logits(c['hf'], tokens, pixels)
  model = vlm.VLM(factory.vlm_config(c['config'].model), factory.vlm_runtime(c['config']))
  got = hf_models.vlm_logits(model, c['params'], tokens, pixels[None])
  return (_max_diff(got, want),
          _max_diff(hf_models.hf_llava_logits(c['back'], tokens, pixels), want))


def test_llava_round_trip_and_bf16_export(converted, tmp_path):
  c = converted('llava')
  assert c['config'].model.kind == 'vlm'
  cfg = factory.vlm_config(c['config'].model)
  assert cfg.image_token_id == LLAVA_IMAGE_ID and cfg.vision.select_layer == -2
  diff, back_diff = _llava_diffs(c)
  print(f'llava workdir max|dlogits|={diff:.2e} to-hf max|dlogits|={back_diff:.2e}')
  assert diff <= TOL and back_diff <= TOL
  assert type(c['back']) is type(c['hf'])
  positions = c['hf'].config.text_config.max_position_embeddings
  assert positions != 4096 and c['back'].config.text_config.max_position_embeddings == positions

  # --dtype bfloat16 (and an explicit --step): every tensor is bf16, the f32 export rounded.
  out = tmp_path / 'bf16'
  _cli('to-hf', '--workdir', c['wd'], '--step', 0, '--out', out, '--dtype', 'bfloat16')
  _, saved = hf_io.load_hf_dir(str(out))
  assert {str(v.dtype) for v in saved.values()} == {'bfloat16'}
  bf16, info = transformers.LlavaForConditionalGeneration.from_pretrained(
      out, dtype=torch.bfloat16, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys']
  f32_state = c['back'].state_dict()
  for name, value in bf16.state_dict().items():
    assert value.dtype == torch.bfloat16, name
    assert torch.equal(value, f32_state[name].to(torch.bfloat16)), name


@pytest.mark.parametrize('case', ['llava/siglip_qwen2',
                                  pytest.param('llava/clip_gpt_neox', marks=pytest.mark.slow)])
def test_llava_with_other_towers(converted, case):
  assert max(_llava_diffs(converted(case))) <= TOL


def test_family_mismatch_is_an_error(tmp_path, capsys):
  hf_models.tiny_llama().save_pretrained(tmp_path / 'hf')
  rc = convert_cli.main(['from-hf', '--family', 'qwen2', '--hf_dir', str(tmp_path / 'hf'),
                         '--out', str(tmp_path / 'wd')])
  assert rc == 2
  assert "model_type='llama'" in capsys.readouterr().err
  rc = convert_cli.main(['to-hf', '--workdir', str(tmp_path / 'nowhere'), '--out',
                         str(tmp_path / 'x')])
  assert rc == 2
  assert 'not a radjax workdir' in capsys.readouterr().err


def test_a_tokenizer_longer_than_the_embedding_is_no_export(tmp_path, capsys):
  """A format whose markers the tokenizer adds past vocab_size: to-hf wrote ids past the
  embedding (HF's forward: IndexError); training refused the same config."""
  hf_models.tiny_llama(vocab_size=300).save_pretrained(tmp_path / 'hf')
  _tokenizer_json(str(tmp_path / 'hf' / 'tokenizer.json'), 300)
  _cli('from-hf', '--family', 'llama', '--hf_dir', tmp_path / 'hf', '--out', tmp_path / 'wd')
  config = workdir.load_config(str(tmp_path / 'wd'))
  with config.unlocked():
    config.data.chat_format = 'radjax'  # 4 more tokens
  workdir.save_config(config, str(tmp_path / 'wd'))
  rc = convert_cli.main(['to-hf', '--workdir', str(tmp_path / 'wd'), '--out',
                         str(tmp_path / 'out')])
  assert rc == 2 and not (tmp_path / 'out').exists()
  assert ("the tokenizer has 304 tokens with chat format 'radjax', the model 300 embedding "
          'rows') in capsys.readouterr().err


def test_imports_keep_the_whole_tokenizer(tmp_path):
  """An EOS that only tokenizer_config.json names (Qwen2's way) and a sentencepiece-only
  directory (Vicuna's) both reach the workdir's tokenizer."""
  import sentencepiece as spm

  from radjax.data import tokens
  hf = hf_models.tiny_llama(vocab_size=300, seed=3)
  _tokenizer_json(str(tmp_path / 'tok.json'), 300)
  fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tok.json'),
                                              eos_token='w7', bos_token='<s>')
  hf.save_pretrained(tmp_path / 'cfg')
  fast.save_pretrained(tmp_path / 'cfg')
  _cli('from-hf', '--family', 'llama', '--hf_dir', tmp_path / 'cfg', '--out', tmp_path / 'a')
  config = workdir.load_config(str(tmp_path / 'a'))
  assert tokens.load_tokenizer(config.data.tokenizer).eos_token == 'w7'

  text = tmp_path / 'text.txt'
  text.write_text('\n'.join(f'the heart is {w} and the lungs are clear {i}'
                            for i, w in enumerate(['normal', 'enlarged', 'small'] * 40)))
  spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / 'sp'),
                                 vocab_size=60, model_type='bpe')
  hf.save_pretrained(tmp_path / 'sp_only')
  (tmp_path / 'sp_only' / 'tokenizer.model').write_bytes((tmp_path / 'sp.model').read_bytes())
  _cli('from-hf', '--family', 'llama', '--hf_dir', tmp_path / 'sp_only', '--out',
       tmp_path / 'b')
  config = workdir.load_config(str(tmp_path / 'b'))
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / 'sp.model'))
  tok = tokens.load_tokenizer(config.data.tokenizer)
  assert tok.convert_ids_to_tokens(list(range(60))) == [sp.id_to_piece(i) for i in range(60)]
  ids = tok('the heart is enlarged', add_special_tokens=False)['input_ids']
  assert tok.decode(ids) == 'the heart is enlarged'


def test_conversions_never_write_over_a_workdir(converted, tmp_path, capsys):
  """from-hf into a workdir, or to-hf with another workdir as --out: refused, nothing
  written (config.json there still describes its checkpoints)."""
  import glob
  import os
  import shutil
  c = converted('llama')
  target = str(tmp_path / 'trained')
  shutil.copytree(c['wd'], target)
  snapshot = lambda: {p: open(p, 'rb').read()  # noqa: E731
                      for p in glob.glob(f'{target}/**', recursive=True) if os.path.isfile(p)}
  before = snapshot()
  hf_dir = str(tmp_path / 'hf')
  hf_models.tiny_qwen2().save_pretrained(hf_dir)
  _tokenizer_json(os.path.join(hf_dir, 'tokenizer.json'), 300)
  assert convert_cli.main(['from-hf', '--family', 'qwen2', '--hf_dir', hf_dir,
                           '--out', target]) == 2
  assert 'is a radjax workdir already' in capsys.readouterr().err
  assert convert_cli.main(['to-hf', '--workdir', str(c['wd']), '--out', target]) == 2
  assert 'is a radjax workdir (it has checkpoints)' in capsys.readouterr().err
  assert snapshot() == before
  # An HF directory given as the workdir, or a file as --out: named as such.
  assert convert_cli.main(['to-hf', '--workdir', hf_dir, '--out', str(tmp_path / 'o')]) == 2
  assert "is a Hugging Face model's config" in capsys.readouterr().err
  assert convert_cli.main(['to-hf', '--workdir', str(c['wd']), '--out',
                           os.path.join(hf_dir, 'tokenizer.json')]) == 2
  assert 'tokenizer.json is a file; choose a directory' in capsys.readouterr().err


def test_to_hf_replaces_a_non_empty_out_only_when_asked_and_whole(converted, tmp_path,
                                                                  capsys, monkeypatch):
  """to-hf into a folder holding another model wrote over its config.json beside its old
  shards (a model neither HF nor radjax could read back). Now refused; --overwrite replaces
  the folder whole, and an export that fails leaves it as it was."""
  import os
  c = converted('llama')
  out = tmp_path / 'victim'
  hf_models.tiny_qwen2().save_pretrained(out, max_shard_size='20KB')
  shards = sorted(p.name for p in out.glob('model-*.safetensors'))
  assert len(shards) > 1
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  assert convert_cli.main(['to-hf', '--workdir', str(c['wd']), '--out', str(out)]) == 2
  assert 'is not empty' in capsys.readouterr().err
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before

  def fail(*args, **kwargs):
    raise ConversionError('no space left')
  from radjax.convert import export
  from radjax.convert.common import ConversionError
  monkeypatch.setattr(export, 'export_hf', fail)
  assert convert_cli.main(['to-hf', '--workdir', str(c['wd']), '--out', str(out),
                           '--overwrite']) == 2
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  monkeypatch.undo()
  _cli('to-hf', '--workdir', c['wd'], '--out', out, '--overwrite')
  assert sorted(os.listdir(out)) == sorted(os.listdir(c['out']))  # no old shard left
  assert not [n for n in os.listdir(tmp_path) if '.partial-' in n or '.replaced-' in n]
  back = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
  ids = torch.arange(3, 40)[None]
  np.testing.assert_array_equal(back(ids).logits.detach().numpy(),
                                c['back'](ids).logits.detach().numpy())


def test_a_damaged_or_incomplete_safetensors_download_is_named(tmp_path, capsys):
  """A cut .safetensors (an interrupted download) was safetensors' traceback; a missing
  shard of a sharded one was 'HF tensor ... is missing', naming no file."""
  import os
  hf_dir = tmp_path / 'hf'
  hf_models.tiny_llama().save_pretrained(hf_dir, max_shard_size='20KB')
  shards = sorted(hf_dir.glob('model-*.safetensors'))
  os.remove(shards[-1])
  assert convert_cli.main(['from-hf', '--family', 'llama', '--hf_dir', str(hf_dir),
                           '--out', str(tmp_path / 'wd1')]) == 2
  err = capsys.readouterr().err
  assert 'model.safetensors.index.json lists shards that are absent' in err
  assert shards[-1].name in err
  cut = tmp_path / 'cut'
  hf_models.tiny_llama().save_pretrained(cut)
  weights = cut / 'model.safetensors'
  with open(weights, 'r+b') as f:
    f.truncate(weights.stat().st_size // 2)
  assert convert_cli.main(['from-hf', '--family', 'llama', '--hf_dir', str(cut),
                           '--out', str(tmp_path / 'wd2')]) == 2
  err = capsys.readouterr().err
  assert f'{weights}: not a readable safetensors file' in err
  assert not (tmp_path / 'wd1').exists() and not (tmp_path / 'wd2').exists()


@pytest.mark.parametrize('fmt', ['vicuna', 'llava', 'chatml', 'caption', 'none'])
def test_a_vlm_chat_format_survives_the_round_trip(converted, tmp_path, fmt, capsys):
  """to-hf writes the format as the chat template; from-hf reads it back (a VLM imported in
  another format answers prompts it was never trained on), and config.eval.stop_strings
  from generation_config.json ('caption' and 'none' render one template: caption's stop at
  '\\n' tells them apart; caption came back as none and ran on past the report's line). A
  template radjax has no format for is said."""
  from radjax.convert import export
  c = converted('llava')
  config = c['config'].copy_and_resolve_references()
  _tokenizer_json(str(tmp_path / 'tok.json'), 300)
  config.data.tokenizer = str(tmp_path / 'tok.json')
  config.data.chat_format = fmt
  config.eval.stop_strings = ('Impression:',) if fmt == 'chatml' else ()
  config.model.image_token_id = -1  # the tokenizer's <image>
  export.export_hf(config, c['params'], str(tmp_path / 'hf'))
  _cli('from-hf', '--family', 'llava', '--hf_dir', tmp_path / 'hf', '--out', tmp_path / 'wd')
  back = workdir.load_config(str(tmp_path / 'wd'))
  assert back.data.chat_format == fmt
  assert tuple(back.eval.stop_strings) == tuple(config.eval.stop_strings)
  assert 'chat template' not in capsys.readouterr().err
  if fmt != 'vicuna':
    return

  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')
  tok.chat_template = "{% for m in messages %}USER: {{ m['content'] }} {% endfor %}ASSISTANT:"
  tok.save_pretrained(tmp_path / 'hf')
  _cli('from-hf', '--family', 'llava', '--hf_dir', tmp_path / 'hf', '--out', tmp_path / 'wd2')
  assert workdir.load_config(str(tmp_path / 'wd2')).data.chat_format == 'radjax'
  assert "chat template is none of radjax's chat formats" in capsys.readouterr().err


@pytest.mark.parametrize('fmt', ['radjax', 'vicuna', 'llava', 'chatml', 'dolly'])
def test_the_chat_template_of_a_vlm_with_a_system_prompt_gives_format_and_prompt(tmp_path,
                                                                                fmt):
  """to-hf renders config.data.system_prompt into the chat template: from-hf recognises
  the format all the same, and takes the system prompt back (the format's default: '')."""
  from radjax.data import chat, tokens
  _tokenizer_json(str(tmp_path / 'tok.json'), 300)
  tok = chat.prepare_tokenizer(tokens.load_tokenizer(str(tmp_path / 'tok.json')),
                               chat.get_format(fmt), images=True)
  for system in ('You are a radiologist.', '', chat.get_format(fmt).default_system):
    tok.chat_template = chat.chat_template(chat.get_format(fmt), system)
    assert convert_cli._chat_format_of(tok) == (
        fmt, '' if system == chat.get_format(fmt).default_system else system)


def test_a_template_without_a_default_system_turn_is_its_format(tmp_path):
  """LLaVA-OneVision's ChatML writes a system turn only when given one: it is `chatml`
  (with chatml's default system prompt, as LLaVA-OneVision trains), found only when every
  conversation opens with a system turn; radjax's own template is found either way."""
  from radjax.data import chat, tokens
  _tokenizer_json(str(tmp_path / 'tok.json'), 300)
  tok = tokens.load_tokenizer(str(tmp_path / 'tok.json'))
  template = hf_models.LLAVA_ONEVISION_CHAT_TEMPLATE
  assert convert_cli._chat_format_of(tok, template) is None
  assert convert_cli._chat_format_of(tok, template, system_turn=True) == ('chatml', '')
  ours = chat.chat_template(chat.CHATML)
  assert convert_cli._chat_format_of(tok, ours) == ('chatml', '')
  assert convert_cli._chat_format_of(tok, ours, system_turn=True) == ('chatml', '')
  llava_15 = hf_models.LLAVA_15_CHAT_TEMPLATE  # no system turn at all: no format here
  assert convert_cli._chat_format_of(tok, llava_15, system_turn=True) is None


def test_llava_15s_own_chat_template_imports_as_the_llava_format(converted, tmp_path, capsys):
  """llava-hf's LLaVA-1.5 directory: its processor's chat_template.json renders no BOS (the
  tokenizer adds it when it encodes) and is radjax's `llava` format, with no system prompt."""
  import json

  from tokenizers import processors

  from radjax.data import tokens
  hf_dir = tmp_path / 'hf'
  converted('llava')['hf'].save_pretrained(hf_dir)
  _tokenizer_json(str(tmp_path / 'tok.json'), 300, LLAVA_IMAGE_ID)
  tok = tokens.load_tokenizer(str(tmp_path / 'tok.json'))
  assert convert_cli._chat_format_of(tok, hf_models.LLAVA_15_CHAT_TEMPLATE) is None  # no BOS
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single='<s> $A', special_tokens=[('<s>', tok.bos_token_id)])
  assert tok('w5')['input_ids'] == [1, 5]
  tok.save_pretrained(hf_dir)
  (hf_dir / 'chat_template.json').write_text(
      json.dumps({'chat_template': hf_models.LLAVA_15_CHAT_TEMPLATE}))
  _cli('from-hf', '--family', 'llava', '--hf_dir', hf_dir, '--out', tmp_path / 'wd')
  config = workdir.load_config(str(tmp_path / 'wd'))
  assert (config.data.chat_format, config.data.system_prompt) == ('llava', '')
  assert 'chat template' not in capsys.readouterr().err
  # Exported back, its processor's two steps (render, then encode with the tokenizer's
  # specials) give radjax's prompt: one BOS, as the template leaves BOS to the tokenizer.
  _cli('to-hf', '--workdir', tmp_path / 'wd', '--out', tmp_path / 'back')
  processor = transformers.AutoProcessor.from_pretrained(tmp_path / 'back')
  messages = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'w7'}]}]
  prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
  ids = processor(images=Image.new('L', (40, 30)), text=prompt,
                  return_tensors='np')['input_ids'][0].tolist()
  tok = tokens.load_tokenizer(tokens.tokenizer_path(config))
  encoder = chat.ConversationEncoder(tok, chat.FORMATS['llava'],
                                     hf_models.llava_image_tokens())
  assert ids[0] == 1 != ids[1] and ids == encoder.prompt([{'role': 'user', 'text': 'w7'}], 1)
  # ... and HF's generate never picks what radjax's never does.
  suppress = transformers.GenerationConfig.from_pretrained(tmp_path / 'back').suppress_tokens
  assert set(suppress) == {encoder.image_id} | set(range(len(tok), config.model.llm.vocab_size))


def test_a_format_that_stops_at_a_string_exports_it(converted, tmp_path):
  """Vicuna's turns end at '###' (XrayGPT's RadVicuna): HF's generate must stop there too."""
  from radjax.convert import export
  c = converted('llama')
  config = c['config'].copy_and_resolve_references()
  config.data.chat_format = 'vicuna'
  export.export_hf(config, c['params'], str(tmp_path / 'v'))
  gen = transformers.GenerationConfig.from_pretrained(tmp_path / 'v')
  assert gen.stop_strings == ['###']
  assert transformers.GenerationConfig.from_pretrained(c['out']).stop_strings is None


def test_an_imported_center_crop_is_said(tmp_path, caplog):
  """llava-hf's LLaVA-1.5 processor crops the middle square; radjax resizes the whole image
  to a square: the import keeps mean/std and says the crop is not kept."""
  import json

  from radjax.convert import export
  from radjax.core import defaults
  (tmp_path / 'preprocessor_config.json').write_text(json.dumps(
      {'do_center_crop': True, 'crop_size': {'height': 336, 'width': 336},
       'image_mean': [0.1, 0.2, 0.3], 'image_std': [0.4, 0.5, 0.6]}))
  config = defaults.get_config()
  with caplog.at_level('WARNING'):
    export.image_stats_from_dir(config, str(tmp_path))
  assert config.data.image_mean == (0.1, 0.2, 0.3)
  assert 'crops the middle square (do_center_crop)' in caplog.text
