"""RadFM's data path: volumes and 2D images batched apart and mixed at batch granularity
(deterministic, resumable, depth-bucketed), volume slots with depth masks, image
delimiter tokens and the keyword-weighted loss (radjax/data/volumes.py, pipeline.py,
processors.py, chat.py, keywords.py)."""
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_prep import writer
from radjax.core import defaults
from radjax.data import chat, keywords, pipeline, pixels, processors, schema, volumes
from radjax.train import loss as loss_lib
from tests.conftest import bpe_tokenizer

MAX_DEPTH, PATCH = 24, 4
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _volume_entry(depth: int, seed: int, rows: int = 12, cols: int = 10) -> dict:
  vol = np.random.default_rng(seed).random((rows, cols, depth)).astype(np.float16)
  buf = io.BytesIO()
  np.save(buf, vol, allow_pickle=False)
  return {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': None}


def _png_entry(seed: int) -> dict:
  px = np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(px).save(buf, format='PNG')
  return {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': None}


def _dataset(path, prefix: int, n: int, volumes: bool) -> str:
  os.makedirs(path, exist_ok=True)
  with writer.ShardedWriter(path, 'train', 2, validate=lambda ex: None) as w:
    for i in range(n):
      image = _volume_entry(3 + (7 * i) % 30, i) if volumes else _png_entry(i)
      w.write(schema.make_example(id=f'{prefix}-{i}', images=[image]))
  return path


SLOTS = {'image': processors.ImageSlots(16, 3, 1, MEAN, STD),
         'volume': processors.VolumeSlots(16, 3, 1, MAX_DEPTH, PATCH, MEAN, STD)}


def make_processor(tasks, kind='image'):
  del tasks

  def process(raw, rng):
    ex = schema.decode(raw)
    prefix, i = map(int, ex['id'].split('-'))
    return {'rid': np.int32(prefix * 1000 + i), **SLOTS[kind](ex, rng)}

  return process


@pytest.fixture(scope='module')
def config(tmp_path_factory):
  root = tmp_path_factory.mktemp('kinds')
  c = defaults.get_config()
  c.seed = 5
  c.train.batch_size = 4
  c.model.vision.max_depth = MAX_DEPTH
  c.data.volume_batch_size = 2
  c.data.volume_batch_share = 0.4
  c.data.depth_buckets = (8, 16)
  c.data.mixture.ct = dict(dir=_dataset(str(root / 'ct'), 1, 23, True), kind='volume')
  c.data.mixture.cxr = dict(dir=_dataset(str(root / 'cxr'), 2, 30, False))
  c.data.mixture.mr = dict(dir=_dataset(str(root / 'mr'), 3, 9, True), kind='volume')
  return c


def _check_batch(batch):
  """One kind per batch; a volume batch padded to the bucket of its deepest volume."""
  if 'depth_mask' not in batch:
    assert batch['images'].shape == (4, 1, 16, 16, 3)
    assert set(batch['source'].tolist()) == {1}  # cxr
    return 'image'
  assert batch['images'].shape[:4] == (2, 1, 16, 16) and batch['images'].ndim == 6
  assert set(batch['source'].tolist()) <= {0, 2}  # ct, mr
  depth = batch['depth_mask'].shape[-1]
  deepest = int(batch['depth_mask'].sum(-1).max())
  assert depth == min([b for b in (8, 16) if b >= deepest] or [MAX_DEPTH])
  assert batch['images'].shape[4] == depth
  return 'volume'


def test_batches_never_mix_kinds_and_follow_the_share(config):
  ds = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  kinds = [_check_batch(ds[i]) for i in range(150)]
  share = kinds.count('volume') / len(kinds)
  assert abs(share - 0.4) < 0.1, share
  depths = {ds[i]['images'].shape[4] for i in range(150) if kinds[i] == 'volume'}
  assert len(depths) >= 2 and depths <= {8, 16, MAX_DEPTH}  # only the buckets compile


def test_mixed_kinds_resume_the_identical_stream(config):
  def fresh():
    return pipeline.make_iterator(pipeline.train_dataset(config, make_processor, 'train', 0, 1),
                                  0)
  it = fresh()
  for _ in range(9):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(15)]
  resumed = fresh()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    _check_batch(got)
    assert got.keys() == want.keys()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_both_kinds_need_a_share(config):
  bad = config.copy_and_resolve_references()
  bad.data.volume_batch_share = 1.0
  with pytest.raises(ValueError, match='volume_batch_share'):
    pipeline.train_dataset(bad, make_processor, 'train', 0, 1)


def _radfm_target_depth(max_d: int) -> int:
  """RadFM's collator (src/train.py DataCollator), written as it is: the depth from
  range(4, 65, 4) (here up to MAX_DEPTH) strictly nearest the deepest image, from 4."""
  target = 4
  for d in range(4, MAX_DEPTH + 1, 4):
    if abs(d - max_d) < abs(target - max_d):
      target = d
  return target


@pytest.mark.parametrize('depth', [1, 2, 3, 5, 6, 7, 10, 13, 40])
def test_a_volume_is_resized_as_radfms_collator_does(depth):
  # torch itself is the reference: F.interpolate's default 'nearest' mode over all three
  # axes, to 16 x 16 in-plane (from 12 x 10) and RadFM's target depth.
  import torch
  entry = _volume_entry(depth, 5)
  vol = np.load(io.BytesIO(entry['data'])).astype(np.float32)  # [rows, cols, depth]
  target = _radfm_target_depth(depth)
  ref = torch.nn.functional.interpolate(torch.from_numpy(vol)[None, None],
                                        size=(16, 16, target))[0, 0].numpy()
  out = SLOTS['volume'](schema.make_example(id='v', images=[entry]), None)
  assert out['images'].shape == (1, 16, 16, MAX_DEPTH, 3)
  np.testing.assert_array_equal(out['depth_mask'][0], np.arange(MAX_DEPTH) < target)
  x = out['images'][0, :, :, :target] * np.float32(STD[0]) + np.float32(MEAN[0])
  for c in range(3):  # the grey value in every channel
    np.testing.assert_allclose(x[..., c], ref, atol=1e-6)
  assert not out['images'][0, :, :, target:].any()  # padding stays zero


def test_images_of_one_sample_share_the_depth_of_its_deepest_scan():
  """RadFM resizes every image of a batch to one depth: a 2D image beside a 12-slice scan
  is repeated to 12 slices (not one depth patch), a one-slice scan too."""
  ex = schema.make_example(id='s', images=[_png_entry(3), _volume_entry(12, 1),
                                           _volume_entry(1, 2)])
  out = processors.VolumeSlots(16, 3, 3, MAX_DEPTH, PATCH, MEAN, STD)(ex, None)
  np.testing.assert_array_equal(out['depth_mask'], np.broadcast_to(np.arange(MAX_DEPTH) < 12,
                                                                   (3, MAX_DEPTH)))
  for i in (0, 2):
    for k in range(1, 12):
      np.testing.assert_array_equal(out['images'][i, :, :, k], out['images'][i, :, :, 0])
    assert out['images'][i, :, :, 0].std() > 0
  alone = SLOTS['volume'](schema.make_example(id='p', images=[_png_entry(3)]), None)
  np.testing.assert_array_equal(alone['depth_mask'][0], np.arange(MAX_DEPTH) < PATCH)
  np.testing.assert_array_equal(alone['images'][0, :, :, :PATCH],
                                out['images'][0, :, :, :PATCH])


def test_a_damaged_volume_names_its_record():
  entry = _volume_entry(5, 0)
  entry['data'] = entry['data'][:40]
  with pytest.raises(schema.SchemaError, match="record 'bad'.*undecodable"):
    SLOTS['volume'](schema.make_example(id='bad', images=[entry]), None)
  nan = np.full((4, 4, 4), np.nan, np.float16)
  buf = io.BytesIO()
  np.save(buf, nan)
  entry = {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': None}
  with pytest.raises(schema.SchemaError, match="record 'nan'.*NaN"):
    SLOTS['volume'](schema.make_example(id='nan', images=[entry]), None)
  buf = io.BytesIO()
  np.save(buf, np.full((4, 4, 4), '0.5'))  # text, not numbers: astype failed naming nothing
  entry = {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': None}
  with pytest.raises(schema.SchemaError, match="record 'words'.*must be numbers.*<U3"):
    SLOTS['volume'](schema.make_example(id='words', images=[entry]), None)


@pytest.mark.parametrize('values', [np.linspace(-1000, 2000, 64),  # Hounsfield units
                                    np.arange(64) * 4.0])  # 8-bit voxels
def test_a_volume_outside_0_1_is_refused_not_clipped(values):
  # Clipped to [0, 1] it would reach the tower as a nearly blank scan, with no error.
  buf = io.BytesIO()
  np.save(buf, values.reshape(4, 4, 4).astype(np.float32))
  entry = {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': None}
  with pytest.raises(schema.SchemaError, match=r"record 'scan.npy'.*not \[0, 1\]"):
    SLOTS['volume'](schema.make_example(id='scan.npy', images=[entry]), None)


# ---- tokens: image delimiters and keyword weights ------------------------------------
@pytest.fixture(scope='module')
def tokenizer():
  return bpe_tokenizer('plain', images=True, delimiters=True)


TURNS = [{'role': 'user', 'text': 'Is there a <image> pleural effusion?'},
         {'role': 'assistant', 'text': 'Yes: a small left pleural effusion and a nodule.'}]


def test_each_image_is_wrapped_in_learned_delimiters(tokenizer):
  enc = chat.ConversationEncoder(tokenizer, chat.get_format('plain'), image_tokens=5,
                                 image_delimiters=True)
  ids, weights = enc.encode(TURNS, 1, 'r')
  begin, end = (tokenizer.convert_tokens_to_ids(t) for t in (chat.IMAGE_BEGIN, chat.IMAGE_END))
  image = tokenizer.convert_tokens_to_ids(chat.IMAGE_MARK)
  i = ids.index(begin)
  assert ids[i:i + 7] == [begin] + [image] * 5 + [end]
  assert ids.count(begin) == ids.count(end) == 1
  assert not any(weights[i:i + 7])
  plain = chat.ConversationEncoder(tokenizer, chat.get_format('plain'), image_tokens=5)
  assert begin not in plain.encode(TURNS, 1, 'r')[0]


def test_keyword_tokens_weigh_three_and_the_loss_follows(tokenizer, tmp_path):
  terms = tmp_path / 'terms.txt'
  terms.write_text('# MeSH\nPleural Effusion\nnodule\neffusion\n')
  kw = keywords.KeywordWeights(keywords.read_terms(str(terms)), 3.0)
  fmt = chat.get_format('plain')
  weighted = chat.ConversationEncoder(tokenizer, fmt, 5, keywords=kw)
  plain = chat.ConversationEncoder(tokenizer, fmt, 5)
  ids_w, w = weighted.encode(TURNS, 1, 'r')
  ids_p, p = plain.encode(TURNS, 1, 'r')
  assert ids_w == ids_p  # the same tokens, only their weights differ
  w, p = np.asarray(w), np.asarray(p)
  assert set(w[p == 0]) == {0}  # prompt and images still carry no loss
  heavy = [i for i in range(len(ids_w)) if w[i] == 3]
  text = tokenizer.decode([ids_w[i] for i in heavy]).replace(' ', '').lower()
  assert text == 'pleuraleffusionnodule'  # both terms, nothing else, not the question's
  assert set(w[(p == 1) & (w != 3)]) == {1}
  # The loss: sum(w * CE) / sum(w) over the answer, against a hand computation.
  logits = jax.random.normal(jax.random.key(0), (1, len(ids_w) - 1, len(tokenizer)))
  targets = jnp.asarray([ids_w[1:]])
  out = loss_lib.token_losses(logits, targets, jnp.asarray([w[1:]]))
  ce = -jax.nn.log_softmax(logits)[0, jnp.arange(len(ids_w) - 1), targets[0]]
  want = float(jnp.sum(ce * w[1:]) / w[1:].sum())
  assert float(out['loss_sum'] / out['weight_sum']) == pytest.approx(want, rel=1e-5)
  plain_loss = loss_lib.token_losses(logits, targets, jnp.asarray([p[1:]]))
  assert abs(float(out['loss_sum'] / out['weight_sum'])
             - float(plain_loss['loss_sum'] / plain_loss['weight_sum'])) > 1e-4
  # Weight 1: exactly the plain loss.
  one = chat.ConversationEncoder(tokenizer, fmt, 5, keywords=keywords.KeywordWeights(kw.terms, 1.0))
  np.testing.assert_array_equal(np.asarray(one.encode(TURNS, 1, 'r')[1]), p)


def test_keyword_terms_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='keyword_terms'):
    keywords.read_terms(str(tmp_path / 'missing.txt'))
  (tmp_path / 'empty.txt').write_text('# nothing\n\n')
  with pytest.raises(ValueError, match='lists no terms'):
    keywords.read_terms(str(tmp_path / 'empty.txt'))


def test_max_slices_caps_volume_batches_below_the_towers_depth(config):
  """RadFM's tables reach 512 slices but it trains on at most 64: the cap is the data's."""
  c = config.copy_and_resolve_references()
  c.data.max_slices, c.data.depth_buckets = 12, (8,)
  cap = pipeline.max_slices(c)
  assert cap == 12 and c.model.vision.max_depth == MAX_DEPTH
  slots = {**SLOTS, 'volume': processors.VolumeSlots(16, 3, 1, cap, PATCH, MEAN, STD)}

  def capped(tasks, kind='image'):
    del tasks
    return lambda raw, rng: {'rid': np.int32(0), **slots[kind](schema.decode(raw), rng)}

  ds = pipeline.train_dataset(c, capped, 'train', 0, 1)
  depths = {ds[i]['images'].shape[4] for i in range(60) if 'depth_mask' in ds[i]}
  assert 12 in depths and depths <= {8, 12}  # the bucket, else the cap (not the tower's 24)
  for bad in (28, 10):  # past the tower's table; not a multiple of the depth patch
    c.data.max_slices = bad
    with pytest.raises(ValueError, match=f'config.data.max_slices={bad}'):
      pipeline.max_slices(c)
  # A bucket off the depth patch passed, then failed at the first volume step naming neither.
  c.data.max_slices, c.data.depth_buckets = 12, (PATCH + 2,)
  with pytest.raises(ValueError, match=rf'config.data.depth_buckets=\({PATCH + 2},\).*'
                                       f'depth_patch_size={PATCH}'):
    pipeline.train_dataset(c, capped, 'train', 0, 1)


def test_the_volume_batch_spec_is_as_deep_as_the_slots_fill_it():
  """The dry run (bench/memory.py) compiles the step for batch_spec('volume'): with
  config.data.max_slices it must be max_slices deep, as the batches training feeds, not
  the tower's max_depth (RadFM's recipe: 64 slices, not 512)."""
  from configs import radfm
  from radjax import tasks
  c = radfm.get_config('size=micro')
  c.model.image_token_id = 4  # no tokenizer: synthetic shapes, as the dry run has
  c.data.max_slices = c.model.vision.depth_patch_size
  assert c.data.max_slices < c.model.vision.max_depth
  task = tasks.make(c, None)
  spec = task.batch_spec('volume')  # float16 voxels [M, H, W, D] (config.data.pixels)
  assert spec['volumes'].shape[3] == spec['depth_mask'].shape[1] == c.data.max_slices
  assert task.slots['volume'].max_depth == c.data.max_slices
  c.data.pixels = 'float32'  # the floats [M, H, W, D, C]
  spec = tasks.make(c, None).batch_spec('volume')
  assert spec['images'].shape[3] == spec['depth_mask'].shape[1] == c.data.max_slices


def test_nearest_indices_are_torchs_3d_nearest_for_every_size_pair():
  """RadFM's collator resizes [B, C, H, W, D] with F.interpolate's 3D nearest kernel, whose
  scale times index is float32: for 18 of these pairs (26 -> 44 among those a RadFM sample
  reaches) that picks another slice than exact integer division."""
  import torch
  for size in range(1, 80):
    for target in range(1, 80):
      x = torch.arange(size, dtype=torch.float32).reshape(1, 1, 1, 1, size)
      ref = torch.nn.functional.interpolate(x, size=(1, 1, target))[0, 0, 0, 0].long().numpy()
      np.testing.assert_array_equal(volumes.nearest_indices(size, target), ref,
                                    err_msg=f'{size} -> {target}')


def test_with_several_processes_the_shares_of_a_volume_batch_have_one_depth(config):
  """Each process padded its own share of a volume batch to its deepest volume's bucket:
  with two processes, the shares of one global batch came out at different depths (one
  global array of two shapes). On several processes the host leaves the batch at its full
  depth and the model picks the bucket from the whole batch (test_vit3d_perceiver.py)."""
  shares = [pipeline.train_dataset(config, make_processor, 'train', p, 2) for p in range(2)]
  apart = 0
  for i in range(60):
    a, b = shares[0][i], shares[1][i]
    assert a['images'].shape == b['images'].shape
    if 'depth_mask' in a:
      assert a['images'].shape[4] == MAX_DEPTH
      apart += int(a['depth_mask'].sum(-1).max() <= 8 < b['depth_mask'].sum(-1).max())
  assert apart  # shares whose own buckets differ: the case that made two shapes


def test_compact_volume_batches_reach_the_tower_as_the_float32_ones(config):
  """config.data.pixels 'uint8' (the default) sends float16 voxels, trimmed to the depth
  bucket as the float32 volumes were; the device's floats are the float32 batch's (within
  1 ulp: tests/test_volume_transport.py)."""
  compact = processors.VolumeSlots(16, 3, 1, MAX_DEPTH, PATCH, MEAN, STD, pixels='uint8')

  def sends(tasks, kind='image'):
    del tasks
    slots = compact if kind == 'volume' else SLOTS[kind]
    return lambda raw, rng: {'rid': np.int32(0), **slots(schema.decode(raw), rng)}

  floats = pipeline.train_dataset(config, make_processor, 'train', 0, 1)
  sent = pipeline.train_dataset(config, sends, 'train', 0, 1)
  device = jax.jit(pixels.as_floats)
  keys = ('images', 'pixel_table', 'volumes', 'volume_norm', 'depth_mask')
  depths = set()
  for i in range(40):
    want, got = floats[i], sent[i]
    if 'depth_mask' not in want:
      continue
    assert got['volumes'].dtype == np.float16 and got['images'].dtype == np.uint8
    assert got['volumes'].shape == want['images'].shape[:-1]  # trimmed to the same bucket
    depths.add(got['volumes'].shape[-1])
    x = np.asarray(device({k: got[k] for k in keys})['images'])
    np.testing.assert_array_max_ulp(x, want['images'], maxulp=1)
  assert len(depths) >= 2


def test_depth_trim_keeps_every_real_slice():
  """A batch is padded to the bucket of its deepest volume: one slice past a bucket goes to
  the next one (depth_patch_size=1 allows any depth), none of its slices cut."""
  for deepest, kept in ((4, 4), (5, 8), (1, 4)):
    mask = np.zeros((2, 1, 8), bool)
    mask[0, 0, :deepest] = True
    batch = {'images': np.ones((2, 1, 2, 2, 8, 1), np.float32), 'depth_mask': mask}
    out = volumes.trim_depth(batch, (4, 8), 8)
    assert out['images'].shape[-2] == out['depth_mask'].shape[-1] == kept
    assert out['depth_mask'].sum() == deepest
    # compact slots (radjax/data/pixels.py): the voxels trimmed, the 2D images kept whole
    compact = {'volumes': np.ones((2, 1, 2, 2, 8), np.float16),
               'images': np.ones((2, 1, 2, 2, 3), np.uint8), 'depth_mask': mask}
    out = volumes.trim_depth(compact, (4, 8), 8)
    assert out['volumes'].shape[-1] == out['depth_mask'].shape[-1] == kept
    assert out['images'].shape == (2, 1, 2, 2, 3)


def test_the_longest_term_wins_whatever_the_list_order():
  text = 'Small pleural effusion.'
  for terms in (('pleural', 'pleural effusion'), ('pleural effusion', 'pleural')):
    assert keywords.KeywordWeights(terms).spans(text) == [(6, 22)]


def _planar(config, size: int):
  """The fixture's mixture with the slots' 16 x 16 as the tower's image_size and
  config.data.volume_image_size = size."""
  c = config.copy_and_resolve_references()
  c.model.vision.image_size, c.model.vision.patch_size = 16, 4
  c.data.volume_image_size = size
  return c


def test_a_deep_volume_batch_is_resized_in_plane_as_radfms_collator_does(config):
  """RadFM's training collator, at its default batch of one volume, resizes a batch deeper
  than 4 slices to 256 x 256 in-plane, F.interpolate (nearest) from its 512 x 512: with
  config.data.volume_image_size the host resizes a volume batch padded deeper than one
  depth patch the same way, torch itself the reference; 2D batches stay whole."""
  import torch
  full = pipeline.train_dataset(_planar(config, 0), make_processor, 'train', 0, 1)
  half = pipeline.train_dataset(_planar(config, 8), make_processor, 'train', 0, 1)
  kinds = set()
  for i in range(40):
    want, got = full[i], half[i]
    if 'depth_mask' not in want:  # a 2D batch: untouched
      assert got['images'].shape == want['images'].shape == (4, 1, 16, 16, 3)
      np.testing.assert_array_equal(got['images'], want['images'])
      kinds.add('image')
      continue
    depth = want['depth_mask'].shape[-1]
    assert depth > PATCH and got['images'].shape == (2, 1, 8, 8, depth, 3)
    np.testing.assert_array_equal(got['depth_mask'], want['depth_mask'])
    x = torch.from_numpy(want['images'][:, 0]).permute(0, 4, 1, 2, 3)  # [B, C, H, W, D]
    ref = torch.nn.functional.interpolate(x, size=(8, 8, depth)).permute(0, 2, 3, 4, 1)
    np.testing.assert_array_equal(got['images'][:, 0], ref.numpy())
    kinds.add('volume')
  assert kinds == {'image', 'volume'}


def test_compact_volume_slots_shrink_in_plane_alike_and_one_patch_deep_stays_whole():
  """The compact transport's voxels and 2D planes take the same rows and columns (the
  device's floats are then the shrunk float32 batch's); a batch one depth patch deep (2D
  images, scans of <= 4 slices: RadFM's target depth 4) keeps the full size."""
  rng = np.random.default_rng(0)
  mask = np.zeros((2, 3, 12), bool)
  mask[:, :, :8] = True
  compact = {'volumes': rng.random((2, 3, 16, 16, 12)).astype(np.float16),
             'images': rng.integers(0, 255, (2, 3, 16, 16, 3), dtype=np.uint8),
             'pixel_table': np.zeros((2, 3, 256, 3), np.float32), 'depth_mask': mask}
  out = volumes.shrink_plane(compact, 6, PATCH)
  rows = volumes.nearest_indices(16, 6)
  np.testing.assert_array_equal(out['volumes'], compact['volumes'][:, :, rows][:, :, :, rows])
  np.testing.assert_array_equal(out['images'], compact['images'][:, :, rows][:, :, :, rows])
  assert out['pixel_table'] is compact['pixel_table']
  shallow = {**compact, 'depth_mask': mask[..., :PATCH],
             'volumes': compact['volumes'][..., :PATCH]}
  assert volumes.shrink_plane(shallow, 6, PATCH)['volumes'].shape[2:4] == (16, 16)


def test_several_processes_leave_the_in_plane_size_to_the_model(config, monkeypatch):
  """Each process sees its share of a volume batch only, so the shares could disagree on
  the batch's in-plane size: their volume batches stay whole (the model resizes them,
  tests/test_vit3d_perceiver.py), with the slot switch only; a size off the patch grid or
  past the tower's image_size is an error naming the knob."""
  c = _planar(config, 8)
  ds = pipeline.train_dataset(c, make_processor, 'train', 0, 2)
  shapes = {ds[i]['images'].shape[2:4] for i in range(12) if 'depth_mask' in ds[i]}
  assert shapes == {(16, 16)}
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  c.runtime.volume_slot_switch = False
  with pytest.raises(ValueError, match=r'volume_image_size=8 on several processes needs '
                                       r'config.runtime.volume_slot_switch'):
    pipeline.volume_image_size(c)
  c.runtime.volume_slot_switch = True
  for bad in (6, 32):
    c.data.volume_image_size = bad
    with pytest.raises(ValueError, match=f'config.data.volume_image_size={bad}: at most'):
      pipeline.volume_image_size(c)


def _radfm_collator_depth(scans: list, d_max: int = 64) -> int:
  """RadFM's src/train.py DataCollator at a batch of one sample (vision_x [S, 3, H, W, D]),
  as written: [4..32] for more than 6 images, else [4..d_max]; the strictly nearest."""
  d_list = list(range(4, 33 if len(scans) > 6 else d_max + 1, 4))
  target, max_d = 4, max(s.shape[-1] for s in scans)
  for d in d_list:
    if abs(d - max_d) < abs(target - max_d):
      target = d
  return target


@pytest.mark.parametrize('count', [1, 6, 7, 10])
def test_a_training_sample_of_more_than_6_images_is_at_most_32_deep(count):
  """RadFM's training collator resizes a sample of > 6 images to at most 32 slices (50 ->
  32, where 6 images go to 48); config.data.many_images / many_images_max_slices."""
  entries = [_volume_entry(50, i) for i in range(count)]
  slots = processors.VolumeSlots(16, 3, 10, 64, PATCH, MEAN, STD, pixels='uint8',
                                 many_images=6, many_images_depth=32)
  out = slots(schema.make_example(id='many', images=entries), None)
  depth = int(out['depth_mask'].sum(-1).max())
  scans = [np.zeros((1, 1, 50))] * count
  assert depth == _radfm_collator_depth(scans) == (32 if count > 6 else 48)
  assert out['volumes'].shape[-1] == 64  # the slot is as deep as ever; the mask says 32


def test_the_full_recipe_caps_training_not_inference():
  """configs/radfm.py sets RadFM's values; evaluation and generation (RadFM's src/test.py
  runs no collator) read volumes at 512 x 512, up to 64 slices, whatever the count."""
  from configs import radfm
  from radjax import tasks
  c = radfm.get_config('data=radiopaedia')
  c.model.image_token_id = 4  # no tokenizer
  assert (c.data.volume_image_size, c.data.many_images, c.data.many_images_max_slices) == (
      256, 6, 32)
  task = tasks.make(c, None)
  assert (task.slots['volume'].many_images, task.slots['volume'].many_images_depth) == (6, 32)
  assert task.image_slots.many_images_depth == 0 and task.image_slots.image_size == 512
  seven = [{'images': [{'kind': '3d'}] * 7}]
  assert task.slots_for(seven) is task.image_slots
  spec = task.batch_spec('volume')  # the deepest bucket's: what the dry run compiles
  assert spec['volumes'].shape == (10, 256, 256, 64)
  assert spec['images'].shape == (10, 256, 256, 3)
  assert task.batch_spec('')['volumes'].shape == (10, 512, 512, 64)
  c.data.many_images_max_slices = 30
  with pytest.raises(ValueError, match='config.data.many_images_max_slices=30'):
    tasks.make(c, None)


def test_on_several_processes_the_training_loss_alone_runs_the_resizing_model(monkeypatch):
  """config.data.volume_image_size on several processes: train_loss hands the loss a model
  whose runtime resizes in-plane to the host's nearest rows and columns (the hosts leave
  the batches whole; the evaluation calls task.loss with the model as it is). One process,
  whose host resizes, keeps the model as it is, so nothing is resized twice."""
  from configs import radfm
  from radjax import tasks
  from radjax.models import factory, vlm
  c = radfm.get_config('size=micro')
  c.model.image_token_id = 4  # no tokenizer
  size = c.model.vision.image_size
  c.data.volume_image_size = size // 2
  model = vlm.VLM(factory.vlm_config(c.model), factory.vlm_runtime(c))

  def plane(task):  # the in-plane rows of the model train_loss runs the loss with
    seen = []
    monkeypatch.setattr(task, 'loss', lambda mdl, *_: seen.append(mdl.rt.volume_plane))
    task.train_loss(model, None, {}, None)
    return seen

  assert plane(tasks.make(c, None)) == [()]
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  rows = tuple(int(i) for i in volumes.nearest_indices(size, size // 2))
  assert plane(tasks.make(c, None)) == [rows]
