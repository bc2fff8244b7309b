"""Shared fixtures. 8 emulated CPU devices so sharding tests run anywhere."""
import atexit
import os
import shutil
import tempfile

# Compiled without LLVM's optimisation passes: most of the suite's time is XLA:CPU compiling
# small programs once each. The HLO, hence buffer sizes and results up to rounding, is the
# same; runs timed or trained to a target (tests/test_demo_targets.py) take it out.
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           f' --xla_force_host_platform_device_count=8 {FAST_COMPILE}')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# One XLA compilation cache per test session, inherited by main.py subprocesses: many tests
# compile the same tiny programs (tests/test_train_step.py: 5.0 -> 3.7 CPU minutes).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='radjax_test_xla_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402

from configs import demo  # noqa: E402


def tiny_config(data_dir: str = ''):
  """The demo recipe at size=micro (configs/common.py); same code path."""
  c = demo.get_config('size=micro')
  c.data.label_loss_weight = 0.0  # the auxiliary label head: tests/test_classify.py
  c.data.box_token_weight = 0.0
  if data_dir:
    c.data.dir = data_dir
  c.data.builder_kwargs.num_train = 64
  c.data.builder_kwargs.num_val = 16
  c.data.builder_kwargs.num_test = 16
  c.train.num_steps = 6
  c.train.checkpoint_every = 2
  c.train.eval_every = 0
  c.train.async_checkpoint = False
  return c


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
  """A small demo dataset built once per test session."""
  from data_prep import demo as demo_builder
  out = str(tmp_path_factory.mktemp('data') / 'demo')
  demo_builder.build(out, seed=0, num_train=64, num_val=16, num_test=16)
  return out


def build_experiment(config, devices=None, **kwargs):
  """setup.build for the configured task; the tokenizer comes from config.data.dir."""
  from radjax import run
  from radjax.train import setup
  return setup.build(config, run.make_task(config), devices, **kwargs)


class Killed(Exception):
  """Stands in for a kill: raised inside the training loop."""


def train_killed_then_resumed(config, workdir: str, monkeypatch, kill_at_batch: int,
                              resumed_config=None) -> None:
  """main's train in-process, dying while it fetches batch `kill_at_batch`, then the same
  command again (which resumes from the last checkpoint; with `resumed_config`, if given)."""
  from radjax import run
  from radjax.data import pipeline
  real, calls = pipeline.to_global, [0]

  def dying(batch, shardings):
    calls[0] += 1
    if calls[0] == kill_at_batch:
      raise Killed()
    return real(batch, shardings)

  monkeypatch.setattr(pipeline, 'to_global', dying)
  with pytest.raises(Killed):
    run.main(config, workdir, 'train')
  monkeypatch.setattr(pipeline, 'to_global', real)
  run.main(config if resumed_config is None else resumed_config, workdir, 'train')


def bpe_tokenizer(fmt: str, **prepare):
  """A small BPE tokenizer trained on the demo's report text (no hub), prepared for chat
  format `fmt` with `chat.prepare_tokenizer`'s keyword arguments."""
  import tokenizers
  from transformers import PreTrainedTokenizerFast

  from data_prep import tokenizer as tokenizer_lib
  from radjax.data import chat
  tok = PreTrainedTokenizerFast(
      tokenizer_object=tokenizers.Tokenizer.from_str(
          tokenizer_lib.train_tokenizer(vocab_size=600).to_str()),
      bos_token='<s>', eos_token='</s>', pad_token='<pad>', unk_token='<unk>')
  return chat.prepare_tokenizer(tok, chat.get_format(fmt), **prepare)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """RADJAX_NO_SKIPS=1 (CI's Beam run, .ci/run) turns a skip into a failure: tests that
  skip where their environment is missing must run where it was built for them."""
  del item, call
  outcome = yield
  report = outcome.get_result()
  if report.skipped and os.environ.get('RADJAX_NO_SKIPS') and not hasattr(report, 'wasxfail'):
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome, report.longrepr = 'failed', f'skipped where RADJAX_NO_SKIPS=1: {reason}'
