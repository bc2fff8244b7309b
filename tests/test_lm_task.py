"""Task 'lm': the demo's decoder trained on the demo's report text alone, through the
same loop, checkpoints and export as the VLM: losses fall, a killed run resumes
identically, and `to-hf` gives a LlamaForCausalLM with the same logits."""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import common
from radjax import run as run_lib
from radjax.core import workdir as workdir_lib
from tests.conftest import tiny_config, train_killed_then_resumed


def lm_config(demo_data):
  config = common.finish(tiny_config(demo_data), common.parse('task=lm'))
  config.train.num_steps = 8
  config.train.checkpoint_every = 4
  config.optim.warmup_steps = 2
  config.optim.lr = 3e-3
  return config


def read_losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r}


@pytest.fixture(scope='module')
def trained(demo_data, tmp_path_factory):
  config = lm_config(demo_data)
  workdir = str(tmp_path_factory.mktemp('lm') / 'full')
  metrics = run_lib.main(config, workdir, 'train')
  return config, workdir, metrics


def test_lm_trains_on_text_and_writes_an_llm_workdir(trained):
  config, workdir, metrics = trained
  losses = read_losses(workdir)
  assert sorted(losses) == list(range(1, 9))
  assert losses[8] < losses[1] - 0.5
  assert np.isfinite(metrics['eval/val_loss']) and 'eval/val_perplexity' in metrics
  assert metrics['eval/val_perplexity'] == pytest.approx(np.exp(metrics['eval/val_loss']))
  assert not any(k.startswith('eval/BLEU') for k in metrics)  # the lm task's evaluators
  saved = workdir_lib.load_config(workdir)
  assert (saved.task, saved.model.kind) == ('lm', 'llm')
  params = workdir_lib.load_params(workdir)
  assert set(params) == {'embedder', 'layers', 'final_norm', 'lm_head'}  # a bare decoder


def test_lm_killed_run_resumes_identically(trained, tmp_path, monkeypatch):
  config, workdir, _ = trained
  full = read_losses(workdir)
  cut = str(tmp_path / 'cut')
  train_killed_then_resumed(config, cut, monkeypatch, kill_at_batch=6)
  assert read_losses(cut) == full


def test_lm_workdir_exports_a_llama_with_the_same_logits(trained, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from radjax.convert import __main__ as convert_cli
  from tests import hf_models
  _, workdir, _ = trained
  # A workdir trained on a GPU with cuDNN attention exports on this CPU: the backend is
  # checked when a run starts, not when a config is read.
  gpu_run = str(tmp_path / 'gpu_run')
  shutil.copytree(workdir, gpu_run)
  config = workdir_lib.load_config(gpu_run)
  config.runtime.attention_impl = 'cudnn'
  workdir_lib.save_config(config, gpu_run)
  out = str(tmp_path / 'hf')
  assert convert_cli.main(['to-hf', '--workdir', gpu_run, '--out', out]) == 0
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match="attention_impl='cudnn' needs an NVIDIA GPU"):
      run_lib.load_trained(config, gpu_run)
  model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  assert type(model).__name__ == 'LlamaForCausalLM'
  config = workdir_lib.load_config(workdir)
  exp, _ = run_lib.load_trained(config, workdir)
  tokens = hf_models.random_tokens(config.model.llm.vocab_size, 512)
  ours = np.asarray(hf_models.logits(exp.model, exp.state.params, tokens))
  diff = np.abs(ours - hf_models.hf_logits(model, tokens)).max()
  print(f'lm workdir -> LlamaForCausalLM max|dlogits|={diff:.2e} (512 tokens)')
  assert diff <= 1e-4
  tok = transformers.AutoTokenizer.from_pretrained(out)
  assert tok.eos_token == '</s>'


@pytest.mark.parametrize('recipe', ['demo', 'llava_tinyllama', 'xraygpt', 'radvlm', 'radfm'])
def test_every_vlm_recipes_task_lm_reads_the_demo_text(demo_data, recipe):
  """README: in the VLM recipes `task=lm` trains the decoder alone. radvlm's stopped before
  its first step: ChatML's markers (config.data.always_trained) under chat_format 'none',
  which the demo tokenizer does not hold as tokens."""
  import importlib

  from radjax.data import source
  config = importlib.import_module(f'configs.{recipe}').get_config('size=micro,task=lm')
  config.data.dir = demo_data
  run_lib.check_config(config)
  processor = run_lib.make_task(config).processor()
  raw = source.open_split(demo_data, 'train')[0]
  assert processor(raw, np.random.default_rng(0))
