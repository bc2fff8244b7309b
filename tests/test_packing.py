"""Sequence packing (config.data.pack): each packed example has exactly its unpacked loss
(LLM and VLM), attention never crosses segments, a killed packed run resumes identically,
and the combinations packing does not support are named config errors."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from data_prep import writer
from radjax import run as run_lib
from radjax.data import pipeline, pixels, schema, source
from radjax.models import layers, llm
from radjax.train import examples_seen
from tests.conftest import tiny_config, train_killed_then_resumed


def packed_config(demo_data, task: str = 'lm'):
  config = tiny_config(demo_data)
  if task == 'lm':
    config = common.finish(config, common.parse('task=lm'))
  config.data.max_len = 128  # room for two or three reports per row
  config.data.too_long = 'drop'
  config.data.pack = True
  config.data.pack_max_examples = 3
  config.runtime.dtype = 'float32'
  return config


def first_batch(config, task):
  return next(pipeline.make_iterator(pipeline.train_dataset(config, task.processor, 'train'), 0))


def sharp_params(task, seed=0):
  """Random params, larger than the 0.02 init, so logits depend strongly on what a token
  attends to (a leak across segments must move a loss by far more than the tolerance).
  Drawn in numpy over the model's shapes: compiling `init` costs more than the test."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(task.model().init, jax.random.PRNGKey(seed), *task.init_inputs())
  draw = lambda s: (rng.normal(0, 0.2, s.shape) if len(s.shape) > 1
                    else 1 + rng.normal(0, 0.1, s.shape)).astype(s.dtype)
  return jax.tree.map(draw, shapes['params'])


def token_nll(task, params, batch):
  """Per-token masked NLL [B, T] of the task's model on `batch` (packed or not)."""
  model = task.model()

  @jax.jit
  def nll(params, batch):
    batch = pixels.as_floats(batch)  # 8-bit images and their tables, as the step reads them
    if 'images' in batch:
      logits, _ = model.apply({'params': params}, batch['tokens'], batch['images'],
                              positions=batch.get('positions'),
                              segment_ids=batch.get('segment_ids'),
                              tile_index=batch.get('tile_index'),
                              tile_weight=batch.get('tile_weight'))
    else:
      logits, _ = model.apply({'params': params}, batch['tokens'], batch.get('positions'),
                              batch.get('segment_ids'), method=llm.Decoder.logits)
    logp = jax.nn.log_softmax(logits, axis=-1)
    out = -jnp.take_along_axis(logp, batch['targets'][..., None], axis=-1)[..., 0]
    return out * batch['loss_mask']
  return np.asarray(nll(params, {k: v for k, v in batch.items() if k in task.batch_spec()}))


def per_example_losses(config, task, params):
  """{tokens of an example: its summed loss} from a packed batch and from the same examples
  unpacked (the stream's first examples, as many as the packed batch holds)."""
  packed = first_batch(config, task)
  nll = token_nll(task, params, packed)
  seg = packed['segment_ids']
  from_packed = {}
  for r in range(seg.shape[0]):
    for s in range(1, seg[r].max() + 1):
      at = seg[r] == s
      assert (packed['positions'][r][at] == np.arange(at.sum())).all()
      from_packed[packed['tokens'][r][at].tobytes()] = nll[r][at].sum()
  plain = config.copy_and_resolve_references()
  plain.data.pack = False
  plain_task = run_lib.make_task(plain)
  examples = pipeline.train_dataset(plain, plain_task.processor, 'train').parents[0]
  n = int((packed['source'] >= 0).sum())
  unpacked = {k: np.stack([examples[i][k] for i in range(n)]) for k in plain_task.batch_spec()}
  nll = token_nll(plain_task, params, unpacked)
  from_unpacked = {}
  for i in range(n):
    length = np.flatnonzero(unpacked['loss_mask'][i])[-1] + 1
    from_unpacked[unpacked['tokens'][i][:length].tobytes()] = nll[i].sum()
  return packed, from_packed, from_unpacked


@pytest.mark.parametrize('task_name', ['lm', 'vlm', 'anyres'])
def test_packed_examples_have_their_unpacked_losses(demo_data, task_name):
  """'anyres': each image's plan travels with its slot, so the k-th placeholder of a row
  still finds its image's k-th token."""
  config = packed_config(demo_data, 'vlm' if task_name == 'anyres' else task_name)
  if task_name != 'lm':
    config.data.max_len = 256  # its examples (16 image tokens, prompt, report) are 70-115
  if task_name == 'anyres':  # 46 image tokens each
    config.model.anyres_grids, config.model.anyres_max_tiles = ((1, 1), (2, 2)), 2
    config.data.augment, config.data.max_len = False, 320
  task = run_lib.make_task(config)
  params = sharp_params(task)
  packed, from_packed, from_unpacked = per_example_losses(config, task, params)
  assert packed['segment_ids'].max(axis=-1).mean() > 1.5  # rows really hold several
  assert from_packed.keys() == from_unpacked.keys()  # the stream's first examples, all
  for key, loss in from_unpacked.items():
    np.testing.assert_allclose(from_packed[key], loss, rtol=1e-5, atol=1e-5)
  if task_name == 'lm':  # sensitivity: the rows without their segments (leaking) differ
    leaky = token_nll(task, params, {k: v for k, v in packed.items() if k != 'segment_ids'})
    assert np.abs(leaky - token_nll(task, params, packed)).max() > 1e-2
  else:  # each row's real images lead its slots, one per example here, with their tables
    assert (packed['image_mask'].sum(-1) == packed['segment_ids'].max(-1)).all()
    real = packed['pixel_table'].any(axis=(-1, -2))
    if task_name == 'anyres':  # an image's tables: its tiles'; padding slots have none
      real = real.any(-1)
    np.testing.assert_array_equal(real, packed['image_mask'])


def two_image_conversations(demo_data, out: str, n: int = 8) -> str:
  """Conversations whose second image comes in a later user turn, after a long question."""
  records = source.open_split(demo_data, 'train')
  os.makedirs(out)
  question = ('Here is the prior study of the same patient, a portable film from last '
              'year; compare the two and describe any interval change: <image>')
  with writer.ShardedWriter(out, 'train', 1, validate=lambda ex: None) as w:
    for i in range(n):
      a, b = schema.decode(records[2 * i]), schema.decode(records[2 * i + 1])
      w.write(schema.make_example(id=f'conv-{i}', split='train',
                                  images=a['images'] + b['images'], conversation=[
          {'role': 'user', 'text': '<image> Is the heart enlarged?'},
          {'role': 'assistant', 'text': 'Yes.'},
          {'role': 'user', 'text': question},
          {'role': 'assistant', 'text': 'No change since the prior study.'}]))
  shutil.copy(os.path.join(demo_data, 'tokenizer.json'), out)
  return out


@pytest.mark.parametrize('anyres', [False, True])
@pytest.mark.parametrize('cut', ['in', 'after'])
def test_a_cut_off_image_leaves_the_packed_row(demo_data, tmp_path, anyres, cut):
  """max_len cuts through the second image's placeholders, or just after them, before the
  answer (too_long='truncate'): the example keeps its first image only (the second one's
  placeholders are cut, or are past its last target and packing leaves them out), so in a
  packed row the next example's placeholders take its own image, not the cut one's second
  (each packed example's loss is still its unpacked one)."""
  config = packed_config(two_image_conversations(demo_data, str(tmp_path / 'conv')), 'vlm')
  config.data.tasks, config.data.max_images = ('conversation',), 2
  # Turn 2's image run is at 70-85; its answer's first target at 88.
  config.data.max_len, config.data.too_long = {'in': 80, 'after': 87}[cut], 'truncate'
  config.data.pack_max_examples, config.data.shuffle = 2, False
  if anyres:  # 17 image tokens each (these films' plans), the second image's at 71-87
    config.model.anyres_grids, config.model.anyres_max_tiles = ((1, 1), (2, 2)), 2
    config.data.augment, config.data.pixels = False, 'uint8'
    config.data.max_len = {'in': 78, 'after': 89}[cut]
  task = run_lib.make_task(config)
  packed, from_packed, from_unpacked = per_example_losses(config, task, sharp_params(task))
  assert (packed['truncated'] == 1).sum() == (packed['source'] >= 0).sum() >= 2
  assert (packed['image_mask'].sum(-1) == packed['segment_ids'].max(-1)).all()
  assert from_packed.keys() == from_unpacked.keys()
  for key, loss in from_unpacked.items():
    np.testing.assert_allclose(from_packed[key], loss, rtol=1e-5, atol=1e-5)


def test_no_token_attends_across_segments():
  cfg = llm.LLMConfig(vocab_size=64, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=64)
  model = llm.Decoder(cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 64, (1, 24)).astype(np.int32)
  segment_ids = np.array([[1] * 10 + [2] * 9 + [0] * 5], np.int32)
  positions = np.array([list(range(10)) + list(range(9)) + [0] * 5], np.int32)
  shapes = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t,
                                               method=llm.Decoder.logits), tokens)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
  logits = jax.jit(lambda t, s: model.apply(params, t, positions, s,
                                            method=llm.Decoder.logits)[0])
  run = lambda t, s=segment_ids: np.asarray(logits(t, s))
  base = run(tokens)
  changed = tokens.copy()
  changed[0, :10] = rng.integers(1, 64, 10)  # segment 1 rewritten
  after = run(changed)
  np.testing.assert_array_equal(after[0, 10:19], base[0, 10:19])  # segment 2 untouched
  assert np.abs(after[0, :10] - base[0, :10]).max() > 1e-3
  # Without segments the same change reaches segment 2: the mask is what stops it.
  leaky = lambda t: run(t, np.ones_like(segment_ids))
  assert np.abs(leaky(changed)[0, 10:19] - leaky(tokens)[0, 10:19]).max() > 1e-3
  mask = np.asarray(layers.segment_mask(jnp.asarray(segment_ids)))[0, 0]
  assert mask.any(axis=-1).all()  # padding rows see padding: no empty softmax
  assert not mask[10:19, :10].any() and not mask[:10, 10:].any()


def test_packed_iterator_resumes_from_its_checkpoint(demo_data, tmp_path):
  """The fast form of the test below: the packed iterator, saved through the trainer's
  Checkpointer mid-stream and restored into a fresh one, continues with the same rows."""
  from radjax.core import checkpoint as checkpoint_lib
  config = packed_config(demo_data)
  task = run_lib.make_task(config)
  ds = pipeline.train_dataset(config, task.processor, 'train')
  it = pipeline.make_iterator(ds, 0)
  for _ in range(2):
    next(it)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=1, use_async=False)
  ckpt.save(2, {'step': np.full((1,), 2, np.int32)}, it)
  ckpt.wait()
  expected = [next(it) for _ in range(3)]
  fresh = pipeline.make_iterator(pipeline.train_dataset(config, task.processor, 'train'), 0)
  ckpt.restore(2, {'step': np.zeros((1,), np.int32)}, fresh)
  ckpt.close()
  for want in expected:
    got = next(fresh)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  assert np.mean([b['segment_ids'].max(-1).mean() for b in expected]) > 1.5
  # What the loop logs of a packed batch: its host keys hold -1 in empty example slots.
  logged = pipeline.host_scalars(expected[0], ds)
  examples = int((expected[0]['source'] >= 0).sum())
  assert examples_seen.row_counts(expected[0], ('demo',)).sum(0).tolist() == [examples] * 2
  assert examples > config.train.batch_size
  assert logged['data/examples_per_row'] == examples / config.train.batch_size
  assert logged['data/padding'] == np.mean(expected[0]['segment_ids'] == 0)
  assert logged['data/truncated'] == 0.0


def _processes(config, task, count: int) -> list:
  """The iterators of `count` simulated processes of a run."""
  return [pipeline.make_iterator(pipeline.train_dataset(config, task.processor, 'train', p,
                                                        count), 0) for p in range(count)]


def _global_batches(iterators, n: int) -> list[dict]:
  """n global batches: each process's batch, in process order."""
  out = []
  for _ in range(n):
    parts = [next(it) for it in iterators]
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out


def _assert_same(got: list[dict], want: list[dict]) -> None:
  for g, w in zip(got, want, strict=True):
    assert g.keys() == w.keys()
    for k in w:
      np.testing.assert_array_equal(g[k], w[k], err_msg=k)


@pytest.mark.parametrize('shards, before, after', [(0, 2, 1), (4, 2, 4), (4, 4, 1)])
def test_a_packed_run_resumes_on_another_process_count(demo_data, shards, before, after):
  """k steps on `before` simulated processes, then their iterator states (as checkpointed:
  JSON, merged as the Checkpointer merges them) resumed on `after` processes: the next
  batches are the rows the uninterrupted run reads, row for row (config.data.pack_shards;
  0: the shards are the first run's processes)."""
  import json

  from radjax.core import checkpoint as checkpoint_lib
  config = packed_config(demo_data)
  config.data.pack_shards = shards
  task = run_lib.make_task(config)
  run = _processes(config, task, before)
  _global_batches(run, 3)
  states = [json.loads(json.dumps(it.get_state())) for it in run]
  want = _global_batches(run, 4)
  resumed = _processes(config, task, after)
  merged = checkpoint_lib.merge_iterator_states(states)
  for it in resumed:
    assert it.refuses(states) is None
    it.set_state(merged)
  _assert_same(_global_batches(resumed, 4), want)
  assert np.mean([b['segment_ids'].max(-1).mean() for b in want]) > 1.5  # rows are packed
  if shards == 0:
    # Which examples share a row is the shards' packing: a run started on `after`
    # processes packs other rows, so the resumed rows are not equal by chance.
    fresh = _processes(config, task, after)
    _global_batches(fresh, 3)
    assert any(not np.array_equal(g['tokens'], w['tokens'])
               for g, w in zip(_global_batches(fresh, 4), want))


def test_a_packed_checkpoint_resumes_through_the_checkpointer(demo_data, tmp_path):
  """Two simulated processes' iterator files in a checkpoint, restored by this one process
  (the trainer's path): the two-process run's next rows."""
  import json
  import os

  from radjax.core import checkpoint as checkpoint_lib
  config = packed_config(demo_data)
  task = run_lib.make_task(config)
  run = _processes(config, task, 2)
  _global_batches(run, 2)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=1, use_async=False)
  ckpt.save(2, {'step': np.full((1,), 2, np.int32)}, run[0])
  ckpt.wait()
  data = os.path.join(str(tmp_path), 'checkpoints', '2', 'data')
  os.remove(os.path.join(data, 'process_0-of-1.json'))
  for p, it in enumerate(run):
    with open(os.path.join(data, f'process_{p}-of-2.json'), 'w') as f:
      json.dump(it.get_state(), f)
  want = _global_batches(run, 3)
  fresh = _processes(config, task, 1)
  state, step = ckpt.restore_latest({'step': np.zeros((1,), np.int32)}, fresh[0])
  ckpt.close()
  assert step == 2 and int(state['step'][0]) == 2
  _assert_same(_global_batches(fresh, 3), want)


def test_a_packed_checkpoint_refuses_a_process_count_its_shards_do_not_split_over(demo_data):
  """2 shards (a 2-process start) cannot be shared by 4 processes; a state saved before
  packed shards were kept (one packer per process) resumes on its own count only."""
  import re
  config = packed_config(demo_data)
  task = run_lib.make_task(config)
  run = _processes(config, task, 2)
  _global_batches(run, 2)
  states = [it.get_state() for it in run]
  want = _global_batches(run, 2)
  four = _processes(config, task, 4)[0]
  why = four.refuses(states)
  assert re.search(r'cut into 2 shards .* resume on a process count that divides 2', why)
  with pytest.raises(ValueError, match='cut into 2 shards'):
    four.set_state(states[0])
  # The older state: the process's packer state alone (with the record log beside it).
  old = [{**{k: v for k, v in s.items() if k not in ('pack_shards', 'shard_states')},
          **s['shard_states'][str(p)]} for p, s in enumerate(states)]
  assert 'before radjax kept packed shards' in _processes(config, task, 1)[0].refuses(old)
  again = _processes(config, task, 2)
  for it, s in zip(again, old):
    it.set_state(s)
  _assert_same(_global_batches(again, 2), want)
  config.data.pack_shards = 3
  with pytest.raises(ValueError, match=r'config\.data\.pack_shards=3: a multiple of the 2 '
                                       r'processes that divides config\.train\.batch_size=8'):
    pipeline.train_dataset(config, task.processor, 'train', 0, 2)


@pytest.mark.slow
def test_packed_run_killed_and_resumed_has_the_same_losses(demo_data, tmp_path, monkeypatch):
  import json
  config = packed_config(demo_data)
  config.train.num_steps = 6
  config.train.checkpoint_every = 3

  def losses(workdir):
    with open(f'{workdir}/metrics.jsonl') as f:
      rows = [json.loads(line) for line in f]
    return ({r['step']: r['train/loss'] for r in rows if 'train/loss' in r},
            [r['data/examples_per_row'] for r in rows if 'data/examples_per_row' in r])

  run_lib.main(config, str(tmp_path / 'full'), 'train')
  train_killed_then_resumed(config, str(tmp_path / 'cut'), monkeypatch, kill_at_batch=5)
  full, per_row = losses(tmp_path / 'full')
  assert sorted(full) == list(range(1, 7)) and min(per_row) > 1.5
  assert losses(tmp_path / 'cut')[0] == full


def test_unsupported_packing_is_a_named_config_error(demo_data):
  config = packed_config(demo_data, 'vlm')
  config.data.label_names = ('Cardiomegaly',)
  config.data.label_loss_weight = 1.0
  with pytest.raises(ValueError, match='pack=True and config.data.label_loss_weight'):
    run_lib.make_task(config)
  config = packed_config(demo_data, 'vlm')
  with pytest.raises(ValueError, match="task 'classify' has no packed form"):
    run_lib.make_task(config, 'classify')
  config.model.vision.kind = 'vit3d'
  with pytest.raises(ValueError, match="pack=True packs 2D images only.*'vit3d'"):
    run_lib.make_task(config)
  config = packed_config(demo_data)
  config.data.pack_max_examples = 0
  with pytest.raises(ValueError, match='config.data.pack_max_examples=0 must be >= 1'):
    pipeline.train_dataset(config, run_lib.make_task(config).processor, 'train')
