"""Nothing lost, nothing silently wrong: damaged inputs, damaged workdirs, unlucky moments
and wrong flags, each on the real code path (real files, real runs, the CLIs' exit codes)."""
import glob
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from radjax import run as run_lib
from radjax.core import checkpoint as checkpoint_lib
from radjax.core import workdir as workdir_lib
from radjax.data import images, schema
from radjax.eval import evaluators as evaluators_lib
from radjax.train import writers
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format='PNG')
  return buf.getvalue()


def _losses(workdir):
  return {r['step']: r['train/loss'] for r in writers.read_rows(
      os.path.join(workdir, 'metrics.jsonl')) if 'train/loss' in r}


# ---- images -----------------------------------------------------------------------------

GREY = np.random.default_rng(0).integers(0, 256, (45, 61)).astype(np.uint8)
KW = dict(size=32, num_channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25), record_id='r')


def test_16_bit_png_gives_the_pixels_of_the_8_bit_one():
  png8, png16 = _png(GREY), _png(GREY.astype(np.uint16) * 257)
  assert Image.open(io.BytesIO(png16)).mode.startswith('I')
  want = images.preprocess({'format': 'png', 'data': png8}, **KW)
  got = images.preprocess({'format': 'png', 'data': png16}, **KW)
  np.testing.assert_array_equal(got, want)
  rng = lambda: np.random.default_rng(3)  # noqa: E731  the training (augmented) path too
  np.testing.assert_array_equal(images.preprocess({'format': 'png', 'data': png16}, **KW,
                                                  rng=rng()),
                                images.preprocess({'format': 'png', 'data': png8}, **KW,
                                                  rng=rng()))


def test_grayscale_is_resized_before_it_becomes_rgb_with_the_same_pixels():
  """preprocess resizes a grayscale image before repeating it to 3 channels; that must give
  exactly the pixels of the RGB copy, on the plain and the augmented path."""
  png_l = _png(GREY)
  png_rgb = _png(np.repeat(GREY[..., None], 3, axis=-1))
  for rng in (lambda: None, lambda: np.random.default_rng(5)):
    got = images.preprocess({'format': 'png', 'data': png_l}, **KW, rng=rng())
    want = images.preprocess({'format': 'png', 'data': png_rgb}, **KW, rng=rng())
    assert got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got, want)
  one = images.preprocess({'format': 'png', 'data': png_l}, **{**KW, 'num_channels': 1})
  assert one.shape == (32, 32, 1)


def test_exported_processor_reproduces_16_bit_preprocessing(tmp_path):
  transformers = pytest.importorskip('transformers')
  from data_prep import tokenizer as tokenizer_lib
  from radjax.convert import llava
  from radjax.data import chat, tokens
  tok = str(tmp_path / 'tokenizer.json')
  tokenizer_lib.save_tokenizer(tokenizer_lib.train_tokenizer(
      300, ['The heart is normal in size. No pleural effusion.'] * 4), tok)
  llava.save_processor(str(tmp_path / 'p'), tokens.load_tokenizer(tok), 32, KW['mean'],
                       KW['std'], 16, 'clip', chat.chat_template(chat.RADJAX))
  processor = transformers.LlavaProcessor.from_pretrained(str(tmp_path / 'p'))
  path = str(tmp_path / 'x16.png')
  with open(path, 'wb') as f:
    f.write(_png(GREY.astype(np.uint16) * 257))
  got = processor.image_processor(images=images.load_image(path),
                                  return_tensors='np')['pixel_values'][0].transpose(1, 2, 0)
  want = images.preprocess({'format': 'png', 'data': _png(GREY)}, **KW)
  assert np.abs(got - want).max() <= 1e-5


def test_degenerate_images_rejected_or_warned(caplog):
  with pytest.raises(schema.SchemaError, match=r"record 'r'.*1x1 pixels"):
    images.preprocess({'format': 'png', 'data': _png(np.zeros((1, 1), np.uint8))}, **KW)
  with pytest.raises(schema.SchemaError, match='64x3 pixels'):
    images.preprocess({'format': 'png', 'data': _png(np.zeros((3, 64), np.uint8))}, **KW)
  images._warned[0] = 0
  with caplog.at_level('WARNING'):
    images.preprocess({'format': 'png', 'data': _png(np.full((16, 16), 255, np.uint8))}, **KW)
  assert 'constant image' in caplog.text


# ---- checkpoints -------------------------------------------------------------------------

def _three_checkpoints(workdir, keep=0):
  ckpt = checkpoint_lib.Checkpointer(workdir, keep, use_async=False)
  it = iter(grain.MapDataset.range(100))
  for step in (1, 2, 3):
    next(it)
    ckpt.save(step, {'params': {'w': jnp.full((64,), float(step))}}, it, force=True)
  ckpt.close()


def _damage(step_dir: str, kind: str):
  if kind == 'truncated file':
    for f in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True):
      with open(f, 'r+b') as fh:
        fh.truncate(os.path.getsize(f) // 2)
  elif kind == 'missing manifest':
    for f in glob.glob(os.path.join(step_dir, 'state', '**', 'manifest.ocdbt'), recursive=True):
      os.remove(f)
  else:  # missing iterator state
    for f in glob.glob(os.path.join(step_dir, 'data', 'process_*.json')):
      os.remove(f)


@pytest.mark.parametrize('kind', ['truncated file', 'missing manifest', 'missing iterator state'])
def test_damaged_newest_checkpoint_falls_back_and_is_kept_aside(tmp_path, kind, caplog):
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  _damage(os.path.join(wd, 'checkpoints', '3'), kind)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  it = iter(grain.MapDataset.range(100))
  with caplog.at_level('WARNING'):
    state, step = ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, it)
  assert step == 2 and float(state['params']['w'][0]) == 2.0 and next(it) == 2
  assert 'checkpoint 3 does not restore' in caplog.text
  assert os.listdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR)) == ['3']  # kept, not deleted
  assert ckpt.latest_step() == 2
  ckpt.close()


def test_no_restorable_checkpoint_is_an_error_that_keeps_them(tmp_path):
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  for step in (1, 2, 3):
    _damage(os.path.join(wd, 'checkpoints', str(step)), 'missing iterator state')
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  with pytest.raises(checkpoint_lib.CheckpointError, match='no checkpoint .* restores'):
    ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, iter(grain.MapDataset.range(9)))
  assert sorted(os.listdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))) == ['1', '2', '3']


def test_a_restore_out_of_memory_moves_nothing(tmp_path, monkeypatch):
  """Device memory running out while a checkpoint is read (a resume on a smaller slice) is
  no damage: every checkpoint was set aside in turn and the rerun trained from scratch.
  (No real allocation fails on this CPU: the device's error is raised in its place.)"""
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)

  def out_of_memory(*args, **kwargs):
    raise jax.errors.JaxRuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '
                                     'allocate 268435456 bytes.')
  monkeypatch.setattr(ckpt, 'restore', out_of_memory)
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r'checkpoint 3 in .* could not be read \(JaxRuntimeError: '
                           r'RESOURCE_EXHAUSTED.*nothing was moved'):
    ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, iter(grain.MapDataset.range(9)))
  assert not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))
  assert ckpt.latest_step() == 3
  ckpt.close()


def _as_if_two_processes(workdir: str, logs=None, key: str = 'log'):
  """Each checkpoint's iterator state as two processes would have written it: the same
  position, and (with `logs`) each its own record log under `key`."""
  for step in (1, 2, 3):
    data = os.path.join(workdir, 'checkpoints', str(step), 'data')
    name = lambda i, n, d=data: os.path.join(d, f'process_{i}-of-{n}.json')
    with open(name(0, 1)) as f:
      state = json.load(f)
    os.remove(name(0, 1))
    for i in range(2):
      with open(name(i, 2), 'w') as f:
        json.dump({**state, **({key: logs[i]} if logs else {})}, f)


class _Refusing(grain.DatasetIterator):
  """An iterator that cannot take another process count's states (as a packed stream whose
  shards that count cannot share: radjax/data/packing.py)."""

  def __init__(self, it):
    super().__init__()
    self.it, self.asked = it, []

  def __next__(self):
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)

  def refuses(self, states):
    self.asked.append(states)
    return 'no way'


def test_a_checkpoint_of_another_process_count_is_an_error_that_moves_nothing(tmp_path):
  """Written by 2 processes (a pod), resumed by 1 where the iterator refuses their states:
  not damaged, so never set aside."""
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  _as_if_two_processes(wd)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  it = _Refusing(iter(grain.MapDataset.range(9)))
  with pytest.raises(checkpoint_lib.CheckpointError,
                     match=r'checkpoint 3 .* was written by 2 process\(es\) and this run has '
                           r'1: no way; nothing was moved'):
    ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, it)
  assert len(it.asked) == 1 and len(it.asked[0]) == 2  # both processes' states
  assert not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))
  assert ckpt.latest_step() == 3
  ckpt.close()


class _StateLog(grain.DatasetIterator):
  """An iterator whose state carries a record-log-like dict, as radjax's does."""

  def __init__(self, it):
    super().__init__()
    self.it, self.log = it, {}

  def __next__(self):
    return next(self.it)

  def get_state(self):
    return {**self.it.get_state(), 'log': self.log}

  def set_state(self, state):
    state = dict(state)
    self.log = state.pop('log', {})
    self.it.set_state(state)


def test_a_checkpoint_of_another_process_count_resumes_from_the_merged_state(tmp_path):
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  _as_if_two_processes(wd, [{'bad': {'a/0': 'x'}, 'dropped': {}},
                            {'bad': {'a/7': 'y'}, 'dropped': {'too_long': {'a/9': 'z'}}}])
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  it = _StateLog(iter(grain.MapDataset.range(100)))
  state, step = ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, it)
  assert step == 3 and float(state['params']['w'][0]) == 3.0
  assert next(it) == 3  # the saved position, not the start
  assert it.log == {'bad': {'a/0': 'x', 'a/7': 'y'}, 'dropped': {'too_long': {'a/9': 'z'}}}
  ckpt.close()
  # Positions that differ across the files cannot be merged: set aside as damaged.
  path = os.path.join(wd, 'checkpoints', '3', 'data', 'process_1-of-2.json')
  with open(path) as f:
    state = json.load(f)
  with open(path, 'w') as f:
    json.dump({**state, 'next_index': 9}, f)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  _, step = ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}},
                                _StateLog(iter(grain.MapDataset.range(100))))
  assert step == 2 and os.listdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR)) == ['3']
  ckpt.close()


def test_a_record_two_processes_dropped_with_different_reasons_is_no_damage(tmp_path):
  """Resumed on another process count: a record that two processes dropped as too long (a
  later epoch hands a record to another process, which draws another task for it: another
  token count in the message) made the merged record log 'differ', so the checkpoint was
  set aside as damaged and the run went back to an older one."""
  from radjax.data import source
  assert source.IteratorWithRecordLog.KEY == checkpoint_lib.RECORD_LOG_KEY
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  where = "record 'a/9'"
  reasons = [f'{where}: {n} tokens do not fit config.data.max_len=256' for n in (300, 280)]
  _as_if_two_processes(wd, [{'bad': {}, 'dropped': {'too_long': {where: r}}} for r in reasons],
                       key=source.IteratorWithRecordLog.KEY)
  log = source.RecordLog(0)
  it = source.IteratorWithRecordLog(iter(grain.MapDataset.range(100)), log)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  _, step = ckpt.restore_latest({'params': {'w': jnp.zeros((64,))}}, it)
  ckpt.close()
  assert step == 3 and next(it) == 3
  assert log.too_long == {where: reasons[0]}
  assert not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))


def test_keep_checkpoints_zero_keeps_all(tmp_path):
  _three_checkpoints(str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3']
  with pytest.raises(ValueError, match='keep_checkpoints=-1'):
    checkpoint_lib.Checkpointer(str(tmp_path), -1)


def test_the_training_run_removes_half_written_checkpoints_a_reader_keeps_them(tmp_path):
  """A kill during a save at a step never saved again (SIGTERM's) left its tmp dir, a
  checkpoint's size of disk, for good."""
  _three_checkpoints(str(tmp_path))
  os.makedirs(tmp_path / 'checkpoints' / '7.orbax-checkpoint-tmp' / 'state')
  checkpoint_lib.Checkpointer(str(tmp_path), 3, use_async=False).close()  # eval, to-hf
  assert '7.orbax-checkpoint-tmp' in os.listdir(tmp_path / 'checkpoints')
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 3, use_async=False, handle_sigterm=True)
  for _ in range(100):  # orbax removes them in a thread (its next save waits for it)
    if len(os.listdir(tmp_path / 'checkpoints')) == 3:
      break
    time.sleep(0.1)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', '3']
  assert ckpt.latest_step() == 3
  ckpt.close()


def test_nonfinite_state_is_never_saved(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 3, use_async=False)
  with pytest.raises(checkpoint_lib.NonFiniteStateError, match='step 5'):
    ckpt.save(5, {'params': {'w': jnp.array([1.0, jnp.nan])}}, force=True)
  ckpt.close()
  assert not os.listdir(tmp_path / 'checkpoints')


def test_sigterm_asks_for_a_checkpoint_and_a_second_one_is_default(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), 3, use_async=False, handle_sigterm=True)
  assert not ckpt.reached_preemption(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert ckpt.reached_preemption(1)
  ckpt.close()
  assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


# ---- metrics.jsonl -----------------------------------------------------------------------

def test_half_written_metrics_line_is_trimmed(tmp_path):
  path = str(tmp_path / 'metrics.jsonl')
  with open(path, 'w') as f:
    f.write('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/loss": 2.25}\n{"step": 3, "tr')
  w = writers.JsonlWriter(path, resume_step=2)
  w.write_scalars(3, {'train/loss': 2.0})
  w.close()
  assert [r['step'] for r in writers.read_rows(path)] == [1, 2, 3]
  with open(path, 'a') as f:  # evaluation runs append after a half line too
    f.write('{"step": 4')
  writers.JsonlWriter(path, resume_step=None).close()
  assert [r['step'] for r in writers.read_rows(path)] == [1, 2, 3]
  with open(path, 'w') as f:
    f.write('{"step": 1}\n{"st\n{"step": 3}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    writers.read_rows(path)
  with open(path, 'w') as f:  # a row without its step (edited by hand)
    f.write('{"step": 1}\n{"train/loss": 2.0}\n{"step": 3}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2: .*integer "step"'):
    writers.JsonlWriter(path, resume_step=3)


# ---- config errors -----------------------------------------------------------------------

@pytest.mark.parametrize('knob,value', [('train.num_steps', 0), ('train.num_steps', -3),
                                        ('train.batch_size', 0), ('mesh.tensor', 0),
                                        ('train.checkpoint_every', 0),
                                        ('train.keep_checkpoints', -1)])
def test_config_errors_name_the_knob(demo_data, tmp_path, knob, value):
  config = tiny_config(demo_data)
  section, key = knob.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=rf'config\.{knob}={value}'):
    run_lib.main(config, str(tmp_path / 'w'), 'train')


def test_cudnn_attention_in_float32_is_named_at_the_start(monkeypatch):
  """cuDNN flash attention takes fp16/bf16 only; JAX raised at the first step."""
  from radjax.models import factory
  monkeypatch.setattr(factory.jax, 'default_backend', lambda: 'gpu')
  config = tiny_config()  # float32
  config.runtime.attention_impl = 'cudnn'
  with pytest.raises(ValueError, match=r"attention_impl='cudnn' needs config\.runtime\.dtype "
                                       r"'bfloat16' or 'float16', not 'float32'"):
    factory.check_backend(config)


def test_cudnn_attention_head_dims_are_checked_at_the_start(monkeypatch):
  """cuDNN's fused attention takes head dims that are multiples of 8 (<= 256): JAX raised
  NotImplementedError at the first GPU step, which a CPU dry run cannot see."""
  from radjax.models import factory
  monkeypatch.setattr(factory.jax, 'default_backend', lambda: 'gpu')
  config = tiny_config()
  config.runtime.attention_impl, config.runtime.dtype = 'cudnn', 'bfloat16'
  factory.check_backend(config)  # the micro demo's heads: 16 and 8 wide
  config.model.vision.num_heads = config.model.vision.embed_dim // 4
  with pytest.raises(ValueError, match=r"needs head dims that are multiples of 8 up to 256; "
                                       r"config\.model has \{'vision': 4\}"):
    factory.check_backend(config)


@pytest.mark.parametrize('knob,value,message', [
  ('model.llm.num_layers', -1, r'config\.model\.llm\.num_layers=-1 must be >= 1'),
  ('model.vision.embed_dim', 0, r'config\.model\.vision\.embed_dim=0 must be >= 1'),
  # a negative lr at the schedule's end, NaN moments from the first step, growing weights
  ('optim.min_lr_ratio', -0.1, r'config\.optim\.min_lr_ratio=-0\.1 must be in \[0, 1\]'),
  ('optim.b2', 1.0, r'config\.optim\.b2=1\.0 must be in \[0, 1\)'),
  ('optim.b1', -0.5, r'config\.optim\.b1=-0\.5 must be in \[0, 1\)'),
  ('optim.weight_decay', -0.01, r'config\.optim\.weight_decay=-0\.01 must be >= 0'),
  ('optim.param_groups', ('frozen',), r"config\.optim\.param_groups: expected \(key, value\) "
                                       r"pairs, got 'frozen'"),
  # a traceback (re.error), a float() error naming no knob, and gradient ascent on the tower
  ('optim.param_groups', (('[', 1.0),), r"config\.optim\.param_groups\[0\]: '\[' is not a "
                                         r'regular expression'),
  ('optim.param_groups', (('vision/.*', 'frozn'), ('.*', 1.0)),
   r"config\.optim\.param_groups\[0\]: 'frozn' must be 'frozen' or a learning-rate multiplier"),
  ('optim.param_groups', (('.*', 1.0), ('vision/.*', -1.0)),
   r"config\.optim\.param_groups\[1\]: -1\.0 must be 'frozen' or a learning-rate"),
  ('data.image_mean', (0.5, 0.5), r'config\.data\.image_mean=\(0\.5, 0\.5\): one value, or '
                                  r'one per channel'),
  # ml_collections reads --config.data.crop_scale=0.5 as (0.5,): uniform(0.5) drew [0.5, 1).
  ('data.crop_scale', (0.5,), r'config\.data\.crop_scale=\(0\.5,\): \(smallest, largest\)'),
  ('data.crop_scale', (0.9, 0.5), r'config\.data\.crop_scale=\(0\.9, 0\.5\): '),
])
def test_model_sizes_pairs_and_channel_values_are_checked_first(knob, value, message):
  """Each was a ZeroDivisionError, a scan error or a broadcast error deep in a run."""
  from radjax.core import config_checks, defaults
  config = defaults.get_config()
  section, *path = knob.split('.')
  node = config[section]
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  assert any(re.fullmatch(message, e) or re.match(message, e)
             for e in config_checks.errors(config)), config_checks.errors(config)


@pytest.mark.parametrize('recipe,knob,value,message', [
  ('radfm.py:size=tiny', 'model.vision.num_heads', 0, r'config\.model\.vision\.num_heads=0'),
  ('xraygpt.py:size=tiny', 'model.projector.hidden_dim', 0, r'.*projector\.hidden_dim=0'),
  ('vqgan.py:size=tiny', 'model.vqgan.codebook_size', 0, r'.*vqgan\.codebook_size=0'),
  # a vit3d tower's token count varies: an mlp copied its last feature into 176 placeholders
  ('radfm.py:size=tiny', 'model.projector.kind', 'mlp', r".*kind='mlp' hands on each of the "
                                                        'vit3d'),
  ('vqgan.py:size=tiny', 'model.vqgan.disc_channels', 24, r'.*disc_channels=24: the '
                                                          r'discriminator widths \[48\]'),
  ('vqgan.py:size=tiny', 'model.vqgan.disc_layers', 7, r'.*disc_layers=7: at image_size'),
  ('demo.py:size=micro', 'model.llm.head_dim', 33, r'config\.model\.llm\.head_dim: rotary'),
  # a negative head_dim: a ZeroDivisionError in RoPE, reshape errors in vit3d / perceiver
  ('demo.py:size=micro', 'model.llm.head_dim', -8, r'config\.model\.llm\.head_dim=-8 must'),
  ('radfm.py:size=tiny', 'model.vision.head_dim', -8, r'config\.model\.vision\.head_dim=-8'),
  ('radfm.py:size=tiny', 'model.projector.head_dim', -8,
   r'config\.model\.projector\.head_dim=-8'),
  # NaN logits from the first step, naming nothing
  ('demo.py:size=micro', 'model.llm.rope_theta', 0.0, r'config\.model\.llm\.rope_theta=0\.0'),
  ('demo.py:size=micro', 'model.llm.norm_eps', -1.0, r'config\.model\.llm\.norm_eps=-1\.0'),
])
def test_part_sizes_are_named_before_a_model_or_dataset_is_built(recipe, knob, value, message):
  """Each was a ZeroDivisionError / TypeError traceback, a NaN loss at vqgan.disc_start, a
  silently wrong model, or a message naming another knob."""
  from radjax.core import recipe as recipe_lib
  config = recipe_lib.load(os.path.join(ROOT, 'configs', recipe))
  section, *path = knob.split('.')
  node = config[section]
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = value
  with pytest.raises(ValueError, match=message):
    run_lib.check_config(config)


def test_a_max_len_that_holds_no_image_is_named_at_the_task():
  """It trained on: 1,000 examples read, then a hint to truncate, which cannot help."""
  from radjax import tasks
  config = tiny_config()
  config.data.max_len, config.model.image_token_id = 8, 4  # no tokenizer here
  with pytest.raises(ValueError, match=r"config\.data\.max_len=8 does not hold one image's "
                                       r'\d+ placeholder tokens'):
    tasks.make(config, None)


def test_main_names_a_bad_size_before_it_builds_the_dataset(tmp_path):
  """A missing dataset was built first (3.5 min for the demo's, hours for MIMIC-CXR)."""
  data = tmp_path / 'data'
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', 'configs/demo.py:size=micro', '--workdir',
       str(tmp_path / 'w'), f'--config.data.dir={data}', '--config.model.vision.num_heads=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and not data.exists() and not any(tmp_path.glob('data.tmp-*'))
  assert proc.stderr.strip().splitlines()[-1].startswith('error: config.model.vision: '
                                                          'embed_dim'), proc.stderr[-2000:]


def test_head_counts_must_divide_the_width_and_recipe_arguments_their_type():
  from radjax.core import defaults
  from radjax.models import llm, vit
  with pytest.raises(ValueError, match='embed_dim 32 is not a multiple of num_heads 3'):
    vit.ViTConfig('clip', 32, 8, embed_dim=32, num_layers=1, num_heads=3, mlp_dim=8)
  with pytest.raises(ValueError, match='embed_dim 32 is not a multiple of num_heads 6'):
    llm.LLMConfig(vocab_size=8, embed_dim=32, num_layers=1, num_heads=6, num_kv_heads=6,
                  mlp_dim=8)
  with pytest.raises(ValueError, match="config argument stage='abc' is not of type int"):
    defaults.parse_arg('stage=abc', stage=1)


# ---- a run killed during the evaluation after its checkpoint --------------------------

class Killed(Exception):
  pass


@pytest.fixture(scope='module')
def killed_in_eval(demo_data, tmp_path_factory):
  """A 4-step run (checkpoints 2, 4) that died in its evaluation at step 4."""
  config = tiny_config(demo_data)
  config.train.num_steps = 4
  wd = str(tmp_path_factory.mktemp('killed') / 'w')
  real = evaluators_lib.run_all

  def dying(evaluators, params, step, writer=None, out_dir=None, split='val'):
    raise Killed()

  evaluators_lib.run_all = dying
  try:
    with pytest.raises(Killed):
      run_lib.main(config, wd, 'train')
  finally:
    evaluators_lib.run_all = real
  return config, wd


def test_the_step_after_an_evaluation_logs_the_training_rate(demo_data, tmp_path,
                                                             monkeypatch):
  """The eval's time was counted as the next logged step's: 9.6 steps/s, then 0.06."""
  config = tiny_config(demo_data)
  config.train.num_steps, config.train.eval_every, config.train.log_every = 4, 2, 1
  config.train.checkpoint_every = 100
  real = evaluators_lib.run_all

  def slow(*args, **kwargs):
    time.sleep(3)
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluators_lib, 'run_all', slow)
  wd = str(tmp_path / 'w')
  run_lib.main(config, wd, 'train')
  rate = {r['step']: r['train/steps_per_sec'] for r in writers.read_rows(
      os.path.join(wd, 'metrics.jsonl')) if 'train/steps_per_sec' in r}
  assert rate[3] > 1.0, rate  # a micro step takes well under a second; the eval 3 s


def _copy(src, tmp_path):
  dst = str(tmp_path / 'copy')
  shutil.copytree(src, dst)
  return dst


def test_resume_completes_the_lost_evaluation(killed_in_eval, tmp_path):
  config, src = killed_in_eval
  wd = _copy(src, tmp_path)
  assert checkpoint_lib.Checkpointer(wd, 3).latest_step() == 4
  assert not writers.eval_logged(os.path.join(wd, 'metrics.jsonl'), 4)
  assert sorted(_losses(wd)) == [1, 2, 3, 4]  # the checkpointed step's row came first
  with open(os.path.join(wd, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 4, "eval/test_loss": 1.0}\n')  # a --mode=eval of another split
    f.write('{"step": 4, "eval/val_lo')  # and a kill mid-write
  assert not writers.eval_logged(os.path.join(wd, 'metrics.jsonl'), 4)
  assert writers.eval_logged(os.path.join(wd, 'metrics.jsonl'), 4, 'test')
  metrics = run_lib.main(config, wd, 'train')
  assert np.isfinite(metrics['eval/val_loss'])
  assert writers.eval_logged(os.path.join(wd, 'metrics.jsonl'), 4)
  assert _losses(wd) == _losses(src)


def test_eval_names_a_differing_model_and_a_damaged_checkpoint(killed_in_eval, tmp_path):
  """--mode=eval reads only: another model's config names its knobs; a newest checkpoint
  that does not restore is named with its step (training, not eval, sets it aside)."""
  config, src = killed_in_eval
  wd = _copy(src, tmp_path)
  changed = config.copy_and_resolve_references()
  changed.model.llm.num_layers = config.model.llm.num_layers + 1
  with pytest.raises(workdir_lib.WorkdirError, match=r'Differing: model\.llm\.num_layers'):
    run_lib.main(changed, wd, 'eval')
  _damage(os.path.join(wd, 'checkpoints', '4'), 'truncated file')
  with pytest.raises(workdir_lib.WorkdirError, match=r'checkpoints/4 does not restore'):
    run_lib.main(config, wd, 'eval')
  assert not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))


@pytest.mark.parametrize('knob', ['clip_norm', 'pack', 'batch_size', 'seed'])
def test_a_knob_that_changes_the_train_state_is_named_and_nothing_moves(killed_in_eval,
                                                                       tmp_path, knob):
  """Gradient clipping on/off changes the optimizer state, packing the input iterator's,
  not the model: the checkpoints are not damaged and must not be set aside; config.json
  stays as it was."""
  config, src = killed_in_eval
  wd = _copy(src, tmp_path)
  before = {p: open(p, 'rb').read() for p in glob.glob(f'{wd}/**', recursive=True)
            if os.path.isfile(p)}
  changed = config.copy_and_resolve_references()
  if knob == 'clip_norm':
    changed.optim.clip_norm = 0.0 if config.optim.clip_norm else 1.0
    state, knobs = '.*opt_state.*', r'optim\.clip_norm: '
  elif knob == 'pack':
    changed.data.pack, changed.data.max_target_tokens = True, 0
    b = config.train.batch_size
    state = f'data iterator: batches of {b} in the checkpoints, packed batches of {b} now.*'
    knobs = r'.*data\.pack: '
  elif knob == 'batch_size':  # the iterator's state is a batch index: another size would
    changed.train.batch_size = 2 * config.train.batch_size  # skip examples
    state, knobs = 'data iterator: batches of .*', r'.*train\.batch_size: '
  else:  # another order under the same index: 17 of 64 records repeated in the epoch
    changed.seed, changed.train.num_steps = config.seed + 1, 8
    state, knobs = f'data order: seed {config.seed}, shuffled.*', r'seed: '
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'another train state than its checkpoints hold; nothing was '
                           rf'written or moved\. State: {state} Knobs that differ from '
                           rf'config\.json: {knobs}'):
    run_lib.main(changed, wd, 'train')
  after = {p: open(p, 'rb').read() for p in glob.glob(f'{wd}/**', recursive=True)
           if os.path.isfile(p)}
  assert after == before and not os.path.exists(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))
  if knob == 'seed':  # a finished run reads no more data (the demo's tower, reused)
    changed.train.num_steps = config.train.num_steps
    assert np.isfinite(run_lib.main(changed, wd, 'train')['eval/val_loss'])


@pytest.mark.slow
def test_damaged_newest_checkpoint_run_resumes_from_the_older(killed_in_eval, tmp_path,
                                                             monkeypatch):
  config, src = killed_in_eval
  wd = _copy(src, tmp_path)
  _damage(os.path.join(wd, 'checkpoints', '4'), 'truncated file')
  monkeypatch.setattr(evaluators_lib, 'run_all', lambda *a, **k: {'eval/x': 1.0})
  run_lib.main(config, wd, 'train')
  assert os.listdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR)) == ['4']
  assert _losses(wd) == _losses(src)  # steps 3 and 4 again, float for float
  assert checkpoint_lib.Checkpointer(wd, 3).latest_step() == 4


def _stand_in_run(workdir: str, config, steps=(2,)) -> None:
  """config.json and checkpoints of a stand-in training state (params and a step; an
  import, workdir.save_params, holds params alone)."""
  workdir_lib.save_config(config, workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, 0, use_async=False)
  for step in steps:
    ckpt.save(step, {'params': {'w': np.zeros(3, np.float32)}, 'step': np.int32(step)})
  ckpt.close()


@pytest.fixture
def saved_workdir(demo_data, tmp_path):
  """A workdir as training leaves it: config.json and checkpoints (of a stand-in state)."""
  config = tiny_config(demo_data)
  wd = str(tmp_path / 'saved')
  _stand_in_run(wd, config, steps=(2, 4))
  return config, wd


def test_changed_architecture_writes_nothing(saved_workdir):
  config, wd = saved_workdir
  before = {p: open(p, 'rb').read() for p in glob.glob(f'{wd}/**', recursive=True)
            if os.path.isfile(p)}
  changed = tiny_config(config.data.dir)
  changed.train.num_steps = 8
  changed.model.llm.num_layers = 3
  changed.model.vision.embed_dim = 48
  with pytest.raises(workdir_lib.WorkdirError,
                     match=r'model\.llm\.num_layers: 2 .* 3 now; model\.vision\.embed_dim'):
    run_lib.main(changed, wd, 'train')
  after = {p: open(p, 'rb').read() for p in glob.glob(f'{wd}/**', recursive=True)
           if os.path.isfile(p)}
  assert after == before
  assert workdir_lib.load_config(wd).model.llm.num_layers == 2
  # A decoder-only workdir is compared on its decoder: the vision and projector sections
  # its config still carries build nothing.
  lm = tiny_config(config.data.dir)
  lm.model.kind = 'llm'
  lm_wd = str(os.path.join(os.path.dirname(wd), 'lm'))
  _stand_in_run(lm_wd, lm)
  other = tiny_config(config.data.dir)
  other.model.kind = 'llm'
  other.model.vision.embed_dim, other.model.projector.hidden_dim = 48, 80
  other.model.llm.max_position_embeddings = 2048  # only `to-hf` reads it
  workdir_lib.check_resumable(other, lm_wd)
  other.model.llm.num_layers = 3
  with pytest.raises(workdir_lib.WorkdirError, match=r'Differing: model\.llm\.num_layers: 2 '
                     r'in the workdir, 3 now\. Use'):
    workdir_lib.check_resumable(other, lm_wd)
  # Schedule knobs resume (a run extended past its num_steps), said since the lr jumps.
  assert workdir_lib.knob_changes(lm, lm_wd) == []
  lm.train.num_steps, lm.optim.lr = lm.train.num_steps * 2, lm.optim.lr / 2
  assert [c.split(':')[0] for c in workdir_lib.knob_changes(lm, lm_wd)] == [
      'optim.lr', 'train.num_steps']


def test_an_imported_model_as_the_workdir_is_refused_and_nothing_moves(saved_workdir):
  """`--workdir` given an import (`from-hf --out W`: params alone) instead of a new run's
  directory: training tried to resume it, found no optimizer state or data position, moved
  the import to checkpoints_damaged and said to rerun, which trained from scratch."""
  config, wd = saved_workdir
  imported = wd + '_imported'
  workdir_lib.save_params(imported, config, {'w': np.zeros(3, np.float32)})
  before = {p: open(p, 'rb').read() for p in glob.glob(f'{imported}/**', recursive=True)
            if os.path.isfile(p)}
  with pytest.raises(workdir_lib.WorkdirError, match=r'checkpoints/0 holds only model params '
                     r'\(an import.*init_from=.*_imported'):
    run_lib.main(config, imported, 'train')
  after = {p: open(p, 'rb').read() for p in glob.glob(f'{imported}/**', recursive=True)
           if os.path.isfile(p)}
  assert after == before and not os.path.exists(os.path.join(imported, 'checkpoints_damaged'))
  workdir_lib.check_resumable(config, imported, train=False)  # eval and generate read it
  workdir_lib.check_resumable(config, wd)  # a training run's checkpoints resume


def test_main_py_writes_no_log_into_a_workdir_it_refuses(saved_workdir):
  import subprocess
  import sys
  config, wd = saved_workdir
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, 'main.py', '--config', f'configs/workdir.py:{wd}', '--workdir', wd,
       '--config.model.llm.num_layers=3'], cwd=root, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0 and 'model.llm.num_layers: 2 in the workdir' in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error: ')  # one line, no traceback
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(os.path.join(wd, 'logs'))


def test_generate_decodes_every_image_before_answering_any(demo_data, tmp_path, monkeypatch):
  """A broken file after a whole batch of good ones: refused, naming it, before anything is
  generated (the reports are printed at the end, so a later failure lost the earlier)."""
  from radjax.eval.decoding import generate as generate_lib
  from radjax.train import setup
  config = tiny_config(demo_data)
  wd = str(tmp_path / 'wd')
  exp = setup.build(config, run_lib.make_task(config), pretrained=False)
  workdir_lib.save_params(wd, config, exp.state.params)
  good, broken = str(tmp_path / 'good.png'), str(tmp_path / 'broken.png')
  with open(good, 'wb') as f:
    f.write(_png(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
  with open(good, 'rb') as f:
    data = f.read()
  with open(broken, 'wb') as f:
    f.write(data[:len(data) // 2])
  calls = []
  monkeypatch.setattr(generate_lib, 'generate', lambda *a, **k: calls.append(1) or 1 / 0)
  with pytest.raises(schema.SchemaError, match=r"'.*broken\.png'.*undecodable"):
    run_lib.main(config, wd, 'generate', [good] * config.eval.batch_size + [broken])
  with pytest.raises(ValueError, match='--out_dir=.*only an LLM-CXR workdir writes files'):
    run_lib.main(config, wd, 'generate', [good], out_dir=str(tmp_path / 'out'))
  assert not calls


@pytest.mark.slow
def test_8_and_16_bit_png_give_the_same_report(killed_in_eval, tmp_path):
  config, src = killed_in_eval
  from data_prep import writer
  path, = glob.glob(os.path.join(config.data.dir, '*test.array_record*'))
  ex = schema.decode(writer.read_records(path)[0])
  grey = np.asarray(Image.open(io.BytesIO(ex['images'][0]['data'])).convert('L'))
  p8, p16 = str(tmp_path / 'a8.png'), str(tmp_path / 'a16.png')
  with open(p8, 'wb') as f:
    f.write(_png(grey))
  with open(p16, 'wb') as f:
    f.write(_png(grey.astype(np.uint16) * 257))
  r8, r16 = run_lib.main(config, src, 'generate', [p8, p16])
  assert r8 == r16


# ---- CLIs --------------------------------------------------------------------------------

def _convert(*argv):
  from radjax.convert import __main__ as convert_cli
  return convert_cli.main([str(a) for a in argv])


def _score(*argv):
  from radjax.eval import __main__ as eval_cli
  return eval_cli.main([str(a) for a in argv] + ['--no-meteor'])


def _one_line_error(capsys, *fragments):
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and '\n' not in err, err
  for frag in fragments:
    assert frag in err, (frag, err)


def test_to_hf_refuses_out_in_the_workdir_and_a_missing_step(saved_workdir, tmp_path, capsys):
  _, wd = saved_workdir
  before = open(os.path.join(wd, 'config.json')).read()
  for out in (wd, os.path.join(wd, 'hf')):
    assert _convert('to-hf', '--workdir', wd, '--out', out) == 2
    _one_line_error(capsys, 'is the workdir or inside it')
  assert open(os.path.join(wd, 'config.json')).read() == before
  assert _convert('to-hf', '--workdir', wd, '--out', tmp_path / 'hf', '--step', 7) == 2
  _one_line_error(capsys, 'no checkpoint of step 7', '[2, 4]')
  assert not os.path.exists(tmp_path / 'hf')
  with open(os.path.join(wd, 'config.json')) as f:
    values = json.load(f)
  values['model']['kind'] = 'audio'
  with open(os.path.join(wd, 'config.json'), 'w') as f:
    json.dump(values, f)
  assert _convert('to-hf', '--workdir', wd, '--out', tmp_path / 'hf') == 2
  _one_line_error(capsys, "config.model.kind='audio'")


def test_convert_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
  assert _convert('to-hf', '--workdir', tmp_path / 'nope', '--out', tmp_path / 'o') == 2
  _one_line_error(capsys, 'config.json does not exist')
  wd = tmp_path / 'w'
  wd.mkdir()
  (wd / 'config.json').write_text('{"model": {"kind": "vl')
  assert _convert('to-hf', '--workdir', wd, '--out', tmp_path / 'o') == 2
  _one_line_error(capsys, f'{wd}/config.json: not valid JSON')
  hf = tmp_path / 'hf'
  hf.mkdir()
  for text, frag in ((b'{"model_type": "llam', 'not valid JSON'),
                     (b'{"model_type": "\xff\xfe"}', 'not UTF-8'),
                     (b'{"model_type": "no_such_model"}', "unknown model_type='no_such_model'")):
    (hf / 'config.json').write_bytes(text)
    assert _convert('from-hf', '--family', 'llama', '--hf_dir', hf, '--out', tmp_path / 'x') == 2
    _one_line_error(capsys, f'{hf}/config.json', frag)
  assert _convert('from-hf', '--family', 'llama', '--hf_dir', tmp_path / 'missing',
                  '--out', tmp_path / 'x') == 2
  _one_line_error(capsys, 'missing')


def test_score_cli_bad_inputs_are_one_line_errors(tmp_path, capsys):
  p = tmp_path / 'p.jsonl'
  out = tmp_path / 'm.json'
  assert _score('score', '--predictions', tmp_path / 'missing.jsonl', '--out', out) == 2
  _one_line_error(capsys, 'missing.jsonl')
  p.write_bytes(b'{"id": 1, "generated": "a", "reference": "b"}\n'
                b'{"id": 2, "generated": "caf\xe9", "reference": "b"}\n')
  assert _score('score', '--predictions', p, '--out', out) == 2
  _one_line_error(capsys, f'{p}:2: not UTF-8')
  p.write_text('\n')
  assert _score('score', '--predictions', p, '--out', out) == 2
  _one_line_error(capsys, 'no prediction rows')
  p.write_text('{"id": 1, "generated": "No effusion.", "reference": "No effusion."}\n'
               '{"id": 2, "generated": "a", "reference": "b"}\n'
               '{"id": 1, "generated": "c", "reference": "d"}\n')
  assert _score('score', '--predictions', p, '--out', out) == 2
  _one_line_error(capsys, 'duplicate id 1 (rows 1 and 3)')
  assert not out.exists()


def test_clis_in_a_subprocess_exit_2_without_traceback(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_bytes(b'\xff\n')
  for argv in (['radjax.eval', 'score', '--predictions', str(bad), '--out', str(tmp_path / 'm')],
               ['radjax.convert', 'to-hf', '--workdir', str(tmp_path), '--out',
                str(tmp_path / 'o')]):
    proc = subprocess.run([sys.executable, '-m', *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr and proc.stderr.strip().startswith('error: ')


def test_saving_a_replicated_state_compiles_no_slice_per_leaf(tmp_path):
  """On several devices orbax would slice every replicated array across its replicas, one
  compiled program per distinct shape (23 s at a first save of 180 leaves); small arrays
  are written whole (checkpoint.REPLICA_PARALLEL_MIN_BYTES)."""
  import jax
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('d',))
  assert mesh.size > 1  # conftest's 8 emulated devices
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {f'w{i}': jax.device_put(jnp.full((i + 1, 40 + i), i, jnp.float32), rep)
           for i in range(24)}
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if 'backend_compile' in \
      event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=1, use_async=False)
    ckpt.save(1, state)
    ckpt.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiles) <= 2, compiles  # the finiteness check, not one per leaf


def test_a_remat_policy_typo_names_its_knob():
  from radjax.core import defaults
  from radjax.models import factory
  config = defaults.get_config()
  config.runtime.remat.llm = 'dot'
  with pytest.raises(ValueError, match=r"config\.runtime\.remat\.llm: 'dot' not in .*'dots'"):
    factory.runtime(config, 'llm')


def test_a_damaged_checkpoint_read_for_its_params_is_one_error_and_no_tracebacks(tmp_path):
  """orbax's failed read leaves tensorstore reads in flight on a closed event loop; each
  printed an 'Event loop is closed' traceback after the error (most runs: 2 to 16)."""
  wd = str(tmp_path / 'w')
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  ckpt.save(1, {'params': {f'w{i}': jnp.full((64,), float(i)) for i in range(40)}}, force=True)
  ckpt.close()
  for f in glob.glob(os.path.join(wd, 'checkpoints', '1', 'state', '**', 'manifest.ocdbt'),
                     recursive=True):
    open(f, 'w').close()  # emptied, as by a full disk
  code = ('from radjax.core import workdir\n'
          'for _ in range(4):\n'
          '  try:\n'
          f'    workdir.load_params({wd!r})\n'
          '  except workdir.WorkdirError as e:\n'
          '    print(e)\n')
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.count('checkpoints/1 does not restore (ValueError: ') == 4, proc.stdout
  assert 'its tree metadata' in proc.stdout and 'Traceback' not in proc.stderr, proc.stderr


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path):
  """/dev/full answers every write with ENOSPC, as a full disk does: the error names the
  file being written (it was `[Errno 28] No space left on device` alone), the old
  config.json stays and no .tmp is left; metrics rows written before stay."""
  from radjax.core import files
  path = str(tmp_path / 'config.json')
  files.write_text_atomic(path, '{"old": 1}')
  os.symlink('/dev/full', path + '.tmp')  # the next write goes to the full "disk"
  with pytest.raises(OSError, match=re.escape(f"No space left on device: '{path}'")):
    files.write_text_atomic(path, '{"new": 2}')
  assert open(path).read() == '{"old": 1}' and not os.path.lexists(path + '.tmp')
  metrics = str(tmp_path / 'metrics.jsonl')
  writer = writers.JsonlWriter(metrics, 0)
  writer.write_scalars(1, {'train/loss': 2.0})
  writer._file.close()
  writer._file = open('/dev/full', 'a')
  with pytest.raises(OSError, match=re.escape(f"No space left on device: '{metrics}'")):
    writer.write_scalars(2, {'train/loss': 1.0})
  assert writers.read_rows(metrics) == [{'step': 1, 'train/loss': 2.0}]


def test_a_second_run_on_a_training_workdir_is_refused(saved_workdir):
  """Two runs on one workdir wrote over each other's checkpoints and metrics.jsonl (and a
  restore raced the other's checkpoint retention). While one trains it holds the lock;
  another is refused before it writes, and the lock goes with the first run."""
  config, wd = saved_workdir
  before = sorted(os.listdir(wd))
  with workdir_lib.training_lock(wd):
    holder = open(os.path.join(wd, workdir_lib.LOCK_FILE)).read()
    assert holder.startswith(f'pid {os.getpid()} on ')
    with pytest.raises(workdir_lib.WorkdirError, match=rf'another run \({holder}\) is '
                       'training in this workdir'):
      run_lib.main(config, wd, 'train')
  assert sorted(os.listdir(wd)) == before  # nothing written, no lock left


def test_ctrl_c_ends_a_run_with_one_line_and_it_resumes(demo_data, tmp_path):
  """SIGINT mid-run: one line saying how to resume (it was two KeyboardInterrupt
  tracebacks), exit 130, the lock released, and the rerun resumes from the checkpoint."""
  from bench import kill_resume
  workdir = str(tmp_path / 'run')
  cmd = kill_resume.command(demo_data, workdir) + [
      '--config.train.num_steps=100000', '--config.train.checkpoint_every=2',
      '--config.train.eval_every=0', '--config.train.log_every=1']
  # PYTHONFAULTHANDLER: a process that does not end is made to print every thread's stack.
  # SIG_DFL before exec: a child inherits an ignored SIGINT and Python then keeps ignoring it
  # (the run trained on for 300 s, twice in full-suite runs). A non-interactive shell starts
  # `cmd &` with SIGINT ignored, so pytest run in the background passes it on to the run.
  proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=dict(os.environ, PYTHONFAULTHANDLER='1'),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    assert kill_resume.wait_for(proc, lambda: len(kill_resume.losses(workdir)) >= 3), \
        proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGINT)
    try:
      out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # seen once under heavy load (session 42)
      proc.send_signal(signal.SIGABRT)
      pytest.fail('no exit 300 s after SIGINT; its threads:\n'
                  + proc.communicate(timeout=60)[0][-12000:])
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130, out[-3000:]
  assert out.strip().splitlines()[-1] == (
      'interrupted; the same command resumes from the newest checkpoint')
  assert 'Traceback' not in out and not os.path.exists(
      os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert checkpoint_lib.Checkpointer(workdir, 3, use_async=False).latest_step() >= 2


def test_16_bit_values_round_to_the_nearest_8_bit_one():
  """v -> round(v * 255 / 65535), not floor: values between two multiples of 257 (real
  16-bit films, not 8-bit ones saved as 16-bit) go to the nearer one."""
  v = np.array([[0, 128, 129, 200, 385, 386, 65407, 65535]], np.uint16)
  img = Image.fromarray(v, mode='I;16')
  got = np.asarray(images.to_8bit(img))
  np.testing.assert_array_equal(got, np.round(v / 257).astype(np.uint8))
  assert list(got[0]) == [0, 0, 1, 1, 1, 2, 255, 255]


def test_runtime_and_optimizer_knobs_that_change_the_checkpoint_are_refused(tmp_path):
  """runtime.scan_layers (stacked or per-layer params) and optim.param_groups (which
  moments exist) change what a checkpoint holds: a resumed run or --mode=eval with
  another value is refused naming the knob; schedule knobs (incl. the warmup) are named
  by knob_changes, not refused."""
  from radjax.core import workdir as workdir_lib
  config = tiny_config()
  wd = str(tmp_path / 'w')
  workdir_lib.save_config(config, wd)
  os.makedirs(os.path.join(wd, 'checkpoints', '2'))  # a workdir a run would resume
  workdir_lib.check_resumable(config, wd)
  for key, value in [('runtime.scan_layers', not config.runtime.scan_layers),
                     ('optim.param_groups', (('.*llm.*', 1.0), ('.*', 0.1)))]:
    changed = config.copy_and_resolve_references()
    section, name = key.split('.')
    changed[section][name] = value
    with pytest.raises(workdir_lib.WorkdirError, match=rf'Differing: {re.escape(key)}: '):
      workdir_lib.check_resumable(changed, wd)
  changed = config.copy_and_resolve_references()
  changed.optim.warmup_steps = config.optim.warmup_steps + 1
  workdir_lib.check_resumable(changed, wd)
  assert [c.split(':')[0] for c in workdir_lib.knob_changes(changed, wd)] == [
      'optim.warmup_steps']


def test_the_recorded_data_order_covers_each_mixture_share_and_volume_batches(tmp_path):
  """state_structure.json's data order and iterator layout: a mixture component's weight
  (another share of each batch index) and data.volume_batch_size (another batch index)
  are refused on resume, naming the record; a finished run may change the order."""
  import jax

  from radjax.core import workdir as workdir_lib
  config = tiny_config()
  config.data.mixture = {'a': dict(dir='a', tasks=('report',), weight=0.5),
                         'b': dict(dir='b', kind='volume', tasks=('report',), weight=0.5)}
  state = {'params': {'w': jax.ShapeDtypeStruct((3,), jnp.float32)}}
  wd = str(tmp_path / 'w')
  workdir_lib.check_state(config, wd, state, fresh=True)
  assert os.path.exists(os.path.join(wd, workdir_lib.STATE_FILE))
  workdir_lib.check_state(config, wd, state, fresh=False)
  for change, named in [(lambda c: c.data.mixture['a'].update(weight=0.9),
                         r'data order: .*a: weight 0\.5, .* in the checkpoints, .*a: weight 0\.9'),
                        (lambda c: setattr(c.data, 'volume_batch_size', 2),
                         r'data iterator: .*volume batches of 1 in the checkpoints, .*volume '
                         r'batches of 2 now')]:
    changed = config.copy_and_resolve_references()
    change(changed)
    with pytest.raises(workdir_lib.WorkdirError, match=named):
      workdir_lib.check_state(changed, wd, state, fresh=False)
  changed = config.copy_and_resolve_references()
  changed.data.mixture['a'].update(weight=0.9)
  workdir_lib.check_state(changed, wd, state, fresh=False, finished=True)


def test_keep_checkpoints_keeps_the_newest_n_and_a_second_damaged_copy_is_numbered(tmp_path):
  """train.keep_checkpoints=2 of three saves leaves steps 2 and 3; a step set aside twice
  (a damaged step 3 retrained and damaged again) keeps both copies: 3 and 3.1."""
  _three_checkpoints(str(tmp_path / 'k'), keep=2)
  assert sorted(os.listdir(tmp_path / 'k' / 'checkpoints')) == ['2', '3']
  wd = str(tmp_path / 'w')
  _three_checkpoints(wd)
  ckpt = checkpoint_lib.Checkpointer(wd, 0, use_async=False)
  ckpt._set_aside(3)
  ckpt.save(3, {'params': {'w': jnp.full((64,), 3.0)}}, force=True)
  ckpt.wait()
  ckpt._set_aside(3)
  assert sorted(os.listdir(os.path.join(wd, checkpoint_lib.DAMAGED_DIR))) == ['3', '3.1']
  assert ckpt.latest_step() == 2
  ckpt.close()


def test_a_workdir_holding_something_else_is_refused_and_a_log_folder_is_not(tmp_path):
  """check_not_foreign (main.py's training path runs it before writing; see
  test_main_cli.py): weights with no radjax config.json, or a config.json that is not
  radjax's, is another program's folder; a folder holding only a launcher's log is a
  workdir to be."""
  from radjax.core import workdir
  for name, content, said in [('model.safetensors', b'x', 'holds model weights'),
                              ('config.json', b'{"seed": 1}', "config.json is not radjax's"),
                              ('config.json', b'{"_class_name": "VQModel"}',
                               "a Hugging Face model's config"),
                              ('foo.array_record-00000-of-00001', b'', 'a built dataset')]:
    folder = tmp_path / name / str(len(content))
    folder.mkdir(parents=True)
    (folder / name).write_bytes(content)
    with pytest.raises(workdir.WorkdirError, match=re.escape(said)):
      workdir.check_not_foreign(str(folder))
  (tmp_path / 'slurm').mkdir()
  (tmp_path / 'slurm' / 'slurm-123.out').write_text('starting\n')
  workdir.check_not_foreign(str(tmp_path / 'slurm'))
  workdir.check_not_foreign(str(tmp_path / 'absent'))
