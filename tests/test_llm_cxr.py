"""configs/llm_cxr.py at size=micro: a micro codec trained for a few steps, the demo's codes
made from it on first use, one decoder trained on both directions (CXR -> report, report
-> CXR) and text-only instructions; then report -> PNG (exactly the codec's grid of codes,
decodable) and image -> report through `--mode=generate` (radjax/eval/llm_cxr.py)."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import main as main_lib
from configs import classifier as classifier_recipe
from configs import llm_cxr as recipe
from configs import vqgan as vqgan_recipe
from radjax import run as run_lib
from radjax.core import workdir as workdir_lib
from radjax.data import dicom, image_files
from radjax.eval import llm_cxr
from radjax.eval.evaluators import codes as codes_evaluators
from radjax.models import factory, vqgan
from tests.conftest import build_experiment
from tools import faithfulness

REPORT = 'Findings: Moderate left pleural effusion.\nImpression: Left effusion.'


def _codec_config(demo_data):
  """The micro codec with an 8 x 8 grid (64 codes from 32 entries)."""
  c = vqgan_recipe.get_config('size=micro')
  c.data.dir = demo_data
  c.model.vqgan.channel_mult, c.model.vqgan.attn_levels = (1, 2, 2), (2,)
  return c


def _initial_codec(demo_data, workdir):
  """The micro codec at its initial weights (a fast stand-in for a trained one)."""
  c = _codec_config(demo_data)
  cfg = factory.part_config(c.model, 'vqgan')
  with jax.threefry_partitionable(False):  # CPU compiles the default threefry slowly
    params = jax.jit(vqgan.VQGAN(cfg).init)(
        jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 1)))['params']
  workdir_lib.save_params(workdir, c, jax.device_get(nn.meta.unbox(params)))


def _trained_codec(demo_data, workdir):
  """The micro codec trained 2 steps through the generic loop."""
  c = _codec_config(demo_data)
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = 2, 2, 0
  c.train.async_checkpoint = False
  run_lib.main(c, workdir, 'train')


def _config(demo_data, codec, tmp, steps):
  c = recipe.get_config(f'size=micro,codec={codec}')
  c.data.mixture.cxr.dir = str(tmp / 'codes')
  c.data.mixture.cxr.builder_kwargs.dataset = demo_data
  c.data.mixture.text.dir = demo_data
  c.train.num_steps, c.train.checkpoint_every = steps, steps
  c.train.async_checkpoint = False
  c.eval.batch_size = 8
  return c


def _train(demo_data, tmp, make_codec, steps):
  codec = str(tmp / 'codec')
  make_codec(demo_data, codec)
  config = _config(demo_data, codec, tmp, steps=steps)
  config.optim.lr, config.optim.warmup_steps = 3e-3, 3  # a few steps must show learning
  main_lib.ensure_data(config)  # encodes the demo with the codec (the mixture's builder)
  workdir = str(tmp / 'lm')
  run_lib.main(config, workdir, 'train')
  return config, workdir, codec


@pytest.fixture(scope='module')
def trained(demo_data, tmp_path_factory):
  with jax.threefry_partitionable(False):  # CPU compiles the default threefry slowly
    return _train(demo_data, tmp_path_factory.mktemp('llm_cxr'), _initial_codec, steps=12)


def _check_both_directions_learn(config, workdir, factor):
  """Held-out loss of each direction well under ln(vocab), a random decoder's loss."""
  exp, _ = run_lib.load_trained(config, workdir)
  after = codes_evaluators.CodesLossEvaluator(exp, 'val').run(exp.state.params, 1)
  chance = np.log(config.model.llm.vocab_size)
  for direction in ('read', 'draw'):
    assert after[f'eval/{direction}_loss'] < factor * chance, (direction, after)


def test_codes_are_built_and_both_directions_learn(trained):
  config, workdir, codec = trained
  with open(os.path.join(config.data.mixture.cxr.dir, 'codes.json')) as f:
    assert json.load(f)['codec'] == os.path.abspath(codec)
  assert workdir_lib.load_config(workdir).codec.workdir == codec  # generation finds it
  _check_both_directions_learn(config, workdir, 0.9)


@pytest.mark.slow
def test_chain_with_a_trained_codec(demo_data, tmp_path):
  """The whole chain as the README runs it: codec trained, codes, 40 LLM steps, a PNG."""
  config, workdir, _ = _train(demo_data, tmp_path, _trained_codec, steps=40)
  _check_both_directions_learn(config, workdir, 0.8)
  path = run_lib.main(config, workdir, 'generate', [], REPORT, str(tmp_path / 'gen'))[0]
  assert np.asarray(Image.open(path)).shape == (32, 32)


def test_report_to_png_has_exactly_the_codec_grid(trained, tmp_path):
  config, workdir, codec_dir = trained
  out = str(tmp_path / 'gen')
  paths = run_lib.main(config, workdir, 'generate', [], REPORT, out)
  assert len(paths) == 1 and paths[0].startswith(out) and paths[0].endswith('.png')
  image = np.asarray(Image.open(paths[0]))
  assert image.shape == (32, 32) and image.dtype == np.uint8  # the codec's size, grayscale
  model = run_lib.load_llm_cxr(config, workdir)
  for seed in range(3):  # sampled codes: always 64, all in the codebook, then decodable
    drawn = model.draw([REPORT, 'Normal chest.', 'Large right pneumothorax.'], seed=seed)
    assert [len(c) for c in drawn.codes] == [64] * 3
    assert all(0 <= k < 32 for c in drawn.codes for k in c)
    assert drawn.images.shape == (3, 32, 32, 1) and np.abs(drawn.images).max() <= 1
  # The PNG is the codec's decoding of the drawn codes.
  again = model.draw([REPORT], seed=config.seed)
  np.testing.assert_array_equal(llm_cxr.to_uint8(again.images[0]), image)


def test_codes_stay_with_the_codec_step_that_made_them(trained, tmp_path, monkeypatch):
  """A codec trained further encodes images otherwise: generation must use the step whose
  codes the decoder learned, and a run that asks for another step is refused, by name."""
  config, workdir, codec = trained
  assert config.codec.step == 0  # pinned when the recipe was read: the codec's latest then
  other = config.copy_and_resolve_references()
  other.codec.step = 3
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'codes\.json: these codes were made by the codec .* at step 0, '
                           r'but .* at step 3\. .*--config\.codec\.step=0'):
    run_lib.main(other, workdir, 'generate', [], REPORT)
  with pytest.raises(workdir_lib.WorkdirError, match='at step 3'):
    run_lib.main(other, workdir, 'train')
  # The recipe pins the step that made the demo's codes, and keeps paths absolute so the
  # workdir generates from any directory.
  monkeypatch.chdir(tmp_path)
  os.makedirs('c2/codes/demo_v6')
  with open('c2/config.json', 'w') as f, open(os.path.join(codec, 'config.json')) as src:
    f.write(src.read())
  with open('c2/codes/demo_v6/codes.json', 'w') as f:
    json.dump({'codec': str(tmp_path / 'c2'), 'step': 7}, f)
  c = recipe.get_config('size=micro,codec=c2')
  assert c.codec.workdir == str(tmp_path / 'c2') and c.codec.step == 7
  assert c.data.mixture.cxr.builder_kwargs.step == 7
  assert c.data.mixture.cxr.dir == str(tmp_path / 'c2' / 'codes' / 'demo_v6')


def test_a_codec_step_it_does_not_have_is_named(trained):
  _, _, codec = trained
  with pytest.raises(workdir_lib.NoCheckpoint, match=r'no checkpoint of step 7 .*\[0\]'):
    llm_cxr.Codec(codec, 7)


def test_image_to_report_returns_text(trained, tmp_path, capsys):
  config, workdir, _ = trained
  path = str(tmp_path / 'x.png')
  Image.fromarray(np.full((40, 40), 90, np.uint8)).save(path)
  sampled = config.copy_and_resolve_references()
  sampled.eval.decoding = 'sample'  # 12 steps in, greedy may stop at once; sampling writes
  reports = run_lib.main(sampled, workdir, 'generate', [path])
  assert len(reports) == 1 and reports[0].strip()
  assert path in capsys.readouterr().out
  penalised = config.copy_and_resolve_references()
  penalised.eval.repetition_penalty = 1.3  # reads text with it; draws codes without it
  model = run_lib.load_llm_cxr(penalised, workdir)
  assert (model.read_cfg.repetition_penalty, model.draw_cfg.repetition_penalty) == (1.3, 1.0)
  codes = model.codec.codes([model.codec.load_image(path)])
  assert len(codes[0]) == 64
  # A DICOM reads as its 8-bit conversion (as the web demo and the datasets read it); a
  # missing file is named.
  import pydicom
  from pydicom.data import get_testdata_file
  dcm = get_testdata_file('CT_small.dcm')
  as_png = str(tmp_path / 'ct.png')
  Image.fromarray(dicom.to_uint8(pydicom.dcmread(dcm), dcm)).save(as_png)
  np.testing.assert_array_equal(model.codec.load_image(dcm), model.codec.load_image(as_png))
  with pytest.raises(image_files.ImageFileError, match=r'nothere\.png: no such file'):
    run_lib.main(config, workdir, 'generate', [str(tmp_path / 'nothere.png')])
  with pytest.raises(ValueError, match='--mode=generate --images gives their reports'):
    run_lib.main(config, workdir, 'chat', [path])
  # Code tokens and the delimiters are never written into a report.
  items = [({'id': 'x', 'images': []}, llm_cxr.read_request(codes[0], 32))]
  rows = model.answerer.answer_ids(model.params, items, model.read_cfg, seed=0)
  assert not any(model.first_code <= t < model.end_code or t in (model.begin_id, model.close_id)
                 for t in rows[0])


def test_a_sampled_answer_is_the_same_in_any_batch_size(trained):
  """Each item draws with its own key (its index in the list): evaluating with another
  config.eval.batch_size, or on another number of devices, gives the same sampled texts."""
  config, workdir, _ = trained
  model = run_lib.load_llm_cxr(config, workdir)
  cfg = dataclasses.replace(model.read_cfg, decoding='sample', temperature=1.5,
                            max_new_tokens=8)
  rng = np.random.default_rng(0)
  items = [({'id': str(i), 'images': []},
            llm_cxr.read_request([int(c) for c in rng.integers(0, 16, 64)], 32))
           for i in range(10)]
  answerer = model.answerer  # batches of 8 (one a device): items 0-7, then 8-9 and padding
  in_two = answerer.answer_ids(model.params, items, cfg, seed=1)
  answerer.batch_size = 16
  in_one = answerer.answer_ids(model.params, items, cfg, seed=1)
  np.testing.assert_array_equal(np.stack(in_one), np.stack(in_two))
  assert len({tuple(r) for r in in_one}) > 1  # sampled, not one text repeated


def test_faithfulness_scores_drawn_real_and_reconstructed_images(trained, demo_data, tmp_path):
  config, workdir, _ = trained
  c = classifier_recipe.get_config('size=micro')
  c.data.dir = demo_data
  with jax.threefry_partitionable(False):  # an untrained classifier: the wiring, not the rates
    exp = build_experiment(c)
  classifier = str(tmp_path / 'cls')
  workdir_lib.save_params(classifier, c, jax.device_get(exp.state.params))
  out = faithfulness.evaluate(workdir, classifier, 'val', n=6, log=lambda *_: None)
  assert out['n'] == 6
  for images in ('generated', 'real', 'reconstructed'):
    rates = out[images]
    assert set(c.data.label_names) <= set(rates)
    for name in c.data.label_names:
      r = rates[name]
      assert r['stated'] + r['ruled_out'] == 6  # the demo states or rules out every finding
  for key in ('frechet_real_vs_generated', 'frechet_real_vs_reconstructed'):
    assert np.isfinite(out[key]) and out[key] >= -1e-6
  assert faithfulness.main(['--llm_cxr', workdir, '--classifier', workdir]) == 2  # not one


def test_web_demo_draws_and_reads_as_generate_mode(trained, tmp_path):
  gradio_client = pytest.importorskip('gradio_client')
  from radjax.serve import app, reporter
  from tests.test_serve import _free_port
  config, workdir, _ = trained
  rep = reporter.load(workdir)
  assert isinstance(rep, reporter.CodesReporter)
  # A conversation past the context is the page's one-line message, not an internal error.
  from radjax.serve import uploads
  with pytest.raises(uploads.UploadError, match="exceed the model's context"):
    rep.answer({'id': 'upload'}, [{'role': 'user', 'text': 'effusion ' * 3000}],
               reporter.Decoding())
  port = _free_port()
  demo = app.launch(rep, port=port, block=False)
  try:
    client = gradio_client.Client(f'http://127.0.0.1:{port}/', verbose=False)
    shown = client.predict(REPORT, config.seed, api_name='/draw')
    png = run_lib.main(config, workdir, 'generate', [], REPORT, str(tmp_path / 'gen'))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(shown).convert('L')),
                                  np.asarray(Image.open(png)))
    _, text, table, _ = client.predict(gradio_client.handle_file(png), 'greedy', 1.0, 1.0, 1,
                                       1.0, 0, api_name='/report')
    assert text == run_lib.main(config, workdir, 'generate', [png])[0]
    assert len(table['data']) == 14
  finally:
    demo.close()


def test_a_first_question_on_the_web_demo_reads_the_uploads_codes(demo_data, tmp_path):
  """A question asked before any report went to the decoder without the image (only the
  report request held its codes): every upload got the same answer. The initial weights
  at 4x scale, so that an answer depends on its prompt."""
  from radjax.data import chat
  from radjax.serve import reporter
  from radjax.train import setup
  from tests.test_serve import write_demo_image
  codec, workdir = str(tmp_path / 'codec'), str(tmp_path / 'lm')
  with jax.threefry_partitionable(False):  # CPU compiles the default threefry slowly
    _initial_codec(demo_data, codec)
    config = _config(demo_data, codec, tmp_path, steps=1)
    main_lib.ensure_data(config)
    exp = setup.build(config, run_lib.make_task(config), pretrained=False)
  params = jax.tree.map(lambda x: 4 * np.asarray(x), exp.state.params)
  workdir_lib.save_params(workdir, config, params)
  rep = reporter.load(workdir)
  cxr, noise = str(tmp_path / 'cxr.png'), str(tmp_path / 'noise.png')
  write_demo_image(demo_data, cxr)
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(noise)
  question, d = 'Is there a pleural effusion?', rep.default_decoding()
  answers = []
  for path in (cxr, noise):
    example, _ = rep.example(path)
    answers.append(rep.answer(example, [{'role': 'user', 'text': question}], d))
    codes = chat.render_codes(rep.model.codec.codes([rep.model.codec.load_image(path)])[0],
                              config.data.codebook_size)
    asked = [{'role': 'user', 'text': f'{codes}\n{question}'}]
    assert answers[-1] == rep.answerer.answer(params, [({'id': path, 'images': []}, asked)],
                                              rep.generation_config(d), d.seed)[0]
    report = rep.report_turns(example)  # a report first: its request holds the codes
    assert rep.with_codes(example, report) == report
  assert answers[0] != answers[1]


def test_tiny_without_a_codec_says_what_to_train():
  with pytest.raises(ValueError, match=r'configs/vqgan.py:size=tiny.*codec='):
    recipe.get_config('size=tiny')
  full = recipe.get_config('')
  # dolly-v2-3b's 50280 rows + LLM-CXR's '### Response:\n' + codes + the two delimiters
  assert (full.model.llm.vocab_size >= 50281 + 1024 + 2 and full.data.codebook_size == 1024
          and full.optim.lr == 5e-6 and full.optim.warmup_steps == 50
          and full.optim.min_lr_ratio == 1.0 and full.data.chat_format == 'dolly')
  assert (full.data.mixture.cxr.weight, full.data.mixture.text.weight) == (0.8, 0.2)
  two = recipe.get_config('stage=2,stage1=/runs/lc1')
  assert two.model.llm.init_from == '/runs/lc1'
  assert two.data.task_options.report_section == 'impression'
  assert full.data.task_options.task_per_record and two.data.task_options.task_per_record
  with pytest.raises(ValueError, match='stage1='):
    recipe.get_config('stage=2')
  # Drawing's knobs, named before anything loads (config.eval has knobs of the same names).
  for key, value in (('top_p', 1.5), ('decoding', 'nucleus'), ('temperature', float('nan'))):
    bad = recipe.get_config('')
    bad.codec[key] = value
    with pytest.raises(ValueError, match=r'config\.codec\.decoding / temperature / top_p'):
      llm_cxr.check_config_codes(bad)


def test_a_tiny_config_reads_its_codec_step_without_starting_jax(tmp_path):
  """main.py loads the config before jax.distributed.initialize: the codec's step, read
  through a checkpoint manager (orbax asks JAX's backend its platform), started the backend,
  and every multi-process run of the tiny recipe failed to join ('must be called before any
  JAX calls'); --mode=dry_run emulated 1 device, not 8."""
  import subprocess
  import sys
  codec = str(tmp_path / 'codec')
  workdir_lib.save_params(codec, vqgan_recipe.get_config('size=micro'), {'w': jnp.zeros(2)},
                          step=3)
  code = ('import sys; from configs import llm_cxr; from jax._src import xla_bridge; '
          f'c = llm_cxr.get_config("size=micro,codec={codec}"); '
          'print(c.codec.step, xla_bridge.backends_are_initialized())')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True,
                        text=True, timeout=300)
  assert proc.stdout.split() == ['3', 'False'], proc.stderr[-2000:]


def test_a_drawing_generated_again_by_another_checkpoint_goes_beside_the_first(tmp_path):
  """`--mode=generate --prompt` names the PNG by what decides it: the same report drawn by
  a later checkpoint or with other draw knobs is written beside the earlier drawing, never
  over it; the same request again gives the same path (nothing new)."""
  import types

  from radjax.eval.decoding import generate as generate_lib

  def model(step: int, value: float, top_p: float = 0.92):
    def draw(reports, seed):
      assert reports == [report] and seed == 5
      return llm_cxr.Drawn(np.full((1, 8, 8, 1), value, np.float32), [[0] * 4])
    return types.SimpleNamespace(
        step=step, exp=types.SimpleNamespace(config=types.SimpleNamespace(seed=5)), draw=draw,
        codec=types.SimpleNamespace(workdir=str(tmp_path / 'codec'), step=0),
        answerer=types.SimpleNamespace(fit_batch=lambda n: None),
        draw_cfg=generate_lib.GenerationConfig(decoding='sample', top_p=top_p))

  report = 'Épanchement pleural gauche, 2 cm — cardiomégalie.'
  first = llm_cxr.generate(model(100, -1.0), str(tmp_path), [], report, write=lambda _: None)[0]
  assert os.path.dirname(first) == str(tmp_path / 'generated') and first.endswith('.png')
  assert llm_cxr.generate(model(100, -1.0), str(tmp_path), [], report,
                          write=lambda _: None) == [first]
  later = llm_cxr.generate(model(200, 1.0), str(tmp_path), [], report, write=lambda _: None)[0]
  other = llm_cxr.generate(model(100, 0.0, top_p=0.5), str(tmp_path), [], report,
                           write=lambda _: None)[0]
  assert len({first, later, other}) == 3
  assert np.asarray(Image.open(first)).max() == 0  # still the first checkpoint's drawing
  assert np.asarray(Image.open(later)).min() == 255
  assert sorted(os.listdir(tmp_path / 'generated')) == sorted(
      os.path.basename(p) for p in (first, later, other))  # no temporary files left


def test_codec_codes_are_row_major_and_decode_back_to_its_reconstruction(trained):
  """Codec.codes flattens the code grid row-major (LLM-CXR's order) and Codec.decode reads
  it back the same way: decode(codes(x)) is the codec's own reconstruction of x. Column-
  major codes (self-consistent in data_prep/encode_codes.py) would draw transposed CXRs."""
  _, _, codec_dir = trained
  codec = llm_cxr.Codec(codec_dir)
  rng = np.random.default_rng(0)
  size, ch = codec.cfg.image_size, codec.cfg.num_channels
  x = rng.uniform(-1, 1, (2, size, size, ch)).astype(np.float32)
  x[1] = np.linspace(-1, 1, size)[:, None, None]  # a vertical ramp: not transpose-symmetric
  params = workdir_lib.load_params(codec_dir, codec.step)
  model = vqgan.VQGAN(codec.cfg)
  grid = np.asarray(model.apply({'params': params}, jnp.asarray(x), method=vqgan.VQGAN.codes))
  codes = codec.codes(list(x))
  assert codes == [g.reshape(-1).tolist() for g in grid]
  want = np.asarray(model.apply({'params': params}, jnp.asarray(grid),
                                method=vqgan.VQGAN.decode_codes))
  np.testing.assert_allclose(codec.decode(codes), np.clip(want, -1, 1), atol=1e-5)
  assert not np.array_equal(grid, np.swapaxes(grid, 1, 2))  # the check can see a transpose


def test_pixels_map_to_png_bytes_by_rounding_and_files_to_minus_one_one():
  """[-1, 1] -> uint8 rounds (0 -> 128, a value just under 1 -> 255), one channel is
  written as grayscale; a PNG is read into [-1, 1] as the codec was trained."""
  x = np.array([-1.0, -0.999, 0.0, 0.999, 1.0, 2.0], np.float32).reshape(1, 6, 1)
  assert llm_cxr.to_uint8(x).tolist() == [[0, 0, 128, 255, 255, 255]]
  assert llm_cxr.to_uint8(np.zeros((2, 2, 3))).shape == (2, 2, 3)
  codec = object.__new__(llm_cxr.Codec)  # preprocessing needs no weights
  codec.cfg = vqgan.VQGANConfig(kind='vqgan', image_size=32, channel_mult=(1, 2),
                                norm_groups=8, base_channels=8, attn_levels=(1,), num_channels=1)
  codec.resize = 'square'
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    for value, want in ((0, -1.0), (255, 1.0)):
      path = os.path.join(d, f'{value}.png')
      Image.fromarray(np.full((40, 40), value, np.uint8)).save(path)
      np.testing.assert_allclose(codec.load_image(path), np.full((32, 32, 1), want), atol=1e-6)


def test_codec_step_zero_is_step_zero_not_the_latest(monkeypatch):
  """config.codec.step=0 (the recipe pins the step that made the codes) is step 0 even
  when the codec has been trained further; only None / -1 mean its latest."""
  monkeypatch.setattr(workdir_lib, 'latest_step', lambda workdir: 40)
  assert [llm_cxr.codec_step('c', s) for s in (None, -1, 0, 7)] == [40, 40, 0, 7]


def test_drawing_samples_by_the_seed_and_each_batch_draws_afresh(trained):
  """The seed a call passes decides the sampled codes (the web demo's seed box); and the
  9th report (the second batch of 8) is not a replay of the first batch's key."""
  config, workdir, _ = trained
  model = run_lib.load_llm_cxr(config, workdir)
  first = model.draw([REPORT] * 9, seed=0).codes
  assert model.draw([REPORT], seed=0).codes[0] == first[0]
  assert model.draw([REPORT], seed=1).codes[0] != first[0]
  assert first[8] != first[0]


def test_the_decoder_exports_as_gpt_neox_with_its_tokenizer(trained, tmp_path):
  """The tiny and micro recipes gave the GPT-NeoX decoder grouped-query attention, which
  HF's GPT-NeoX lacks: `to-hf` refused it. The export also found no tokenizer (data.dir is
  '' and the codes' dataset holds it): no chat template, no eos for HF's generate."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from radjax.convert import __main__ as convert_cli
  from radjax.models import llm
  from tests import hf_models
  config, workdir, _ = trained
  assert config.model.llm.num_kv_heads == config.model.llm.num_heads
  out = str(tmp_path / 'hf')
  assert convert_cli.main(['to-hf', '--workdir', workdir, '--out', out]) == 0
  hf = transformers.GPTNeoXForCausalLM.from_pretrained(out, dtype=torch.float32)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.chat_template and hf.generation_config.eos_token_id is not None
  assert len(tok) <= hf.config.vocab_size
  cfg = factory.llm_config(config.model)
  decoder = llm.Decoder(cfg, factory.runtime(config, 'llm'))
  tokens = hf_models.random_tokens(len(tok), 512)
  ours = hf_models.logits(decoder, workdir_lib.load_params(workdir), tokens)
  np.testing.assert_allclose(hf_models.hf_logits(hf, np.asarray(tokens)), ours, atol=1e-4,
                             rtol=1e-4)
