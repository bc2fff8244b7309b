"""main.py's own command line: a misspelt --config override is a one-line error."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_misspelt_override_is_one_line_naming_it_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'w'
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       str(workdir), '--config.data.dirr=/x'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --config.data.dirr: the config has no key 'dirr'. "
      'Did you mean "dir" instead of "dirr"?')
  assert 'Traceback' not in proc.stderr and not workdir.exists()


def test_a_key_of_an_open_section_says_to_give_the_section_whole(tmp_path):
  """--config.data.builder_kwargs.manual_dir=X (README: builder_kwargs=dict(manual_dir=...))
  was refused as if misspelt; the locked config takes the section whole."""
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       str(tmp_path / 'w'), '--config.data.builder_kwargs.manual_dir=/x'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --config.data.builder_kwargs.manual_dir: the config has no key 'manual_dir'. "
      'config.data.builder_kwargs takes no new key alone; give it whole (it holds seed now): '
      "--config.data.builder_kwargs=\"{'manual_dir': ...}\"")


def test_home_in_a_config_override_becomes_the_path(monkeypatch, tmp_path):
  """The shell does not expand `--config.model.llm.init_from=~/models/x` (README)."""
  import main as main_lib
  from radjax.core import defaults
  monkeypatch.setenv('HOME', str(tmp_path))
  config = defaults.get_config()
  config.model.llm.init_from = '~/models/tinyllama'
  config.data.mixture.a = dict(dir='~/data/a', weight=1.0)
  config.data.system_prompt = 'no ~ here'
  config.lock()
  main_lib.expand_home(config)
  assert config.model.llm.init_from == str(tmp_path / 'models' / 'tinyllama')
  assert config.data.mixture.a.dir == str(tmp_path / 'data' / 'a')
  assert config.data.system_prompt == 'no ~ here'


def _main_py(*args, tmp_path, data):
  return subprocess.run([sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro',
                         '--workdir', str(tmp_path / 'w'), f'--config.data.dir={data}',
                         '--config.train.pre_stage=', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_errors_in_what_was_given_are_one_line(tmp_path, demo_data):
  """A flag typo, an init_from that is no model, eval of a workdir with no checkpoint, a run
  that diverges: the message alone, and --mode=eval creates nothing."""
  (tmp_path / 'empty_dir').mkdir()
  for args, message in [
      (('--mode=eval',), 'error: no checkpoint in ' + str(tmp_path / 'w' / 'checkpoints')),
      (('--num_processes=2',), 'error: a multi-process run needs all three'),
      ((f'--config.model.llm.init_from={tmp_path / "empty_dir"}',),
       "error: config.model.llm.init_from='" + str(tmp_path / 'empty_dir')
       + "': a directory without config.json"),
      (('--config.data.image_std=(0.0,0.0,0.0)',),
       'error: config.data.image_std=(0.0, 0.0, 0.0): finite numbers > 0'),
      (('--config.data.image_mean=(1e38,1e38,1e38)',), 'error: non-finite loss (nan)')]:
    proc = _main_py(*args, tmp_path=tmp_path, data=demo_data)
    assert proc.returncode == 1, (args, proc.stderr[-2000:])
    assert proc.stderr.strip().splitlines()[-1].startswith(message), (args, proc.stderr[-500:])
    assert 'Traceback' not in proc.stderr and proc.stderr.count(message) == 1
    if args == ('--mode=eval',):
      assert not (tmp_path / 'w').exists()  # a read-only mode wrote nothing
    if 'non-finite' in message:  # a run's error in its log file too (a pod's other hosts)
      assert message in (tmp_path / 'w' / 'logs' / 'process_0.log').read_text()


def _config_error(config: str, tmp_path) -> list[str]:
  """stderr lines of main.py with `--config config`, which must fail without a traceback."""
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', config, '--workdir', str(tmp_path / 'w')],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr
  return proc.stderr.strip().splitlines()


def test_a_recipe_that_refuses_its_argument_is_one_line(tmp_path):
  assert _config_error('configs/demo.py:sise=tiny', tmp_path)[-1] == (
      "error: --config: config argument 'sise=tiny': expected key=value with key one of "
      "['size', 'task']")


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
  assert _config_error('configs/nonexist.py', tmp_path) == [
      "error: --config: [Errno 2] No such file or directory: 'configs/nonexist.py'"]


def test_a_url_workdir_is_one_line(tmp_path):
  """os.path.abspath('gs://b/x') is './gs:/b/x': checkpoints would stay on each host's disk."""
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       'gs://bucket/runs/x', '--mode=eval'], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      'error: --workdir=gs://bucket/runs/x: a URL, not a path'), proc.stderr[-500:]
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('mode', ['train', 'generate'])
def test_a_workdir_that_is_a_file_is_named(tmp_path, mode):
  """Training said '[Errno 20] Not a directory: <file>/logs', generate 'no checkpoint in
  <file>/checkpoints', as if the workdir were a folder to fill."""
  workdir = tmp_path / 'notes.txt'
  workdir.write_text('x')
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       str(workdir), f'--mode={mode}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      f'error: --workdir={workdir} is a file; a workdir is a directory'), proc.stderr[-500:]
  assert workdir.read_text() == 'x'


def _files(folder) -> dict:
  return {p: p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def test_training_into_a_model_or_dataset_folder_is_refused_and_writes_nothing(tmp_path,
                                                                              demo_data):
  """--workdir naming a Hugging Face model's folder (or a built dataset's) trained there:
  radjax's config.json replaced the model's, checkpoints and logs landed beside its weights."""
  from tests import hf_models
  hf_dir = tmp_path / 'hf'
  hf_models.tiny_llama().save_pretrained(hf_dir)
  data = tmp_path / 'data'
  data.mkdir()
  for p in os.listdir(demo_data):  # a copy: the fixture is shared
    if os.path.isfile(os.path.join(demo_data, p)):
      (data / p).write_bytes(open(os.path.join(demo_data, p), 'rb').read())
  for folder, message in [(hf_dir, "config.json is a Hugging Face model's config"),
                          (data, 'holds a built dataset')]:
    before = _files(folder)
    proc = _main_py(f'--workdir={folder}', tmp_path=tmp_path, data=demo_data)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {folder}') and message in last, last
    assert 'nothing was written' in last and 'Traceback' not in proc.stderr
    assert _files(folder) == before


def test_a_tokenizer_that_does_not_load_is_named_with_its_knob(tmp_path):
  """A cut tokenizer.json was tokenizers' traceback; a folder of one a JSON error naming no
  file; a model folder without tokenizer files transformers' five lines naming neither.
  (A ValueError: main.py prints it as one line.)"""
  import pytest

  from radjax.data import tokens
  cut = tmp_path / 'cut.json'
  cut.write_text('{"version": "1.0", "trunc')
  (tmp_path / 'cut_dir').mkdir()
  (tmp_path / 'cut_dir' / 'tokenizer.json').write_text('{"version": "1.0", "trunc')
  (tmp_path / 'no_tok').mkdir()
  (tmp_path / 'no_tok' / 'config.json').write_text('{"model_type": "llama"}')
  for path, why in [(cut, 'does not load: Exception: '),
                    (tmp_path / 'cut_dir', 'does not load: '),
                    (tmp_path / 'no_tok', 'does not load: FileNotFoundError: the folder has '
                                          'no tokenizer.json')]:
    with pytest.raises(ValueError) as e:
      tokens.load_tokenizer(str(path), 'config.data.tokenizer')
    assert str(e.value).startswith(f"tokenizer '{path}' (config.data.tokenizer) {why}"), e.value
    assert '\n' not in str(e.value)


@pytest.mark.parametrize('mode, flags, said', [
    ('eval', dict(images=['x.png']), '--images: --mode=eval reads config.data.dir'),
    ('train', dict(prompt='Is there an effusion?'), '--prompt: --mode=train reads'),
    ('eval', dict(out_dir='out'), '--out_dir: --mode=eval reads'),
    ('chat', dict(prompt='Is there an effusion?'), '--prompt: --mode=chat reads its questions'),
])
def test_a_flag_the_mode_does_not_read_is_refused(tmp_path, mode, flags, said):
  """`--mode=eval --images a.png` scored config.data.dir's split as if no image were
  given; `--mode=chat --prompt` dropped the question; before anything is read or built."""
  from radjax import run
  from tests.conftest import tiny_config
  config = tiny_config(str(tmp_path / 'no_data'))
  with pytest.raises(ValueError, match=said):
    run.main(config, str(tmp_path / 'w'), mode, **flags)
  assert not os.path.exists(tmp_path / 'w')


def test_dry_run_refuses_a_flag_it_does_not_read():
  """dry_run does not reach run.main: main.py checks first."""
  workdir = os.path.join(ROOT, 'no_such_dry_run_workdir')
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       workdir, '--mode=dry_run', '--prompt=x'],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: --prompt: --mode=dry_run reads the config alone, not --prompt; '
      '--mode=generate takes --images / --prompt / --out_dir'), proc.stderr
  assert not os.path.exists(workdir)
