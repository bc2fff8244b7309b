"""The Grain pipeline and the token layout: masks, truncation, sharding, bad records."""

import dataclasses

import numpy as np
import pytest

from radjax.data import pipeline, schema
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def processor(demo_data):
  from radjax import run
  config = tiny_config(demo_data)
  return config, run.make_task(config).processor()


TURNS = [{'role': 'user', 'text': 'Describe.'},
         {'role': 'assistant', 'text': 'Heart size is normal.'}]


def test_loss_mask_covers_exactly_the_answer(processor):
  config, proc = processor
  enc = proc.encoder
  arrays = enc.training_arrays(TURNS, 1, 64, 'r1')
  prompt = enc.prompt(TURNS[:1], 1)
  sp = enc.special_ids
  answer = (enc.tokenizer.encode('Heart size is normal.', add_special_tokens=False)
            + [sp['<|end|>'], enc.eos])
  mask = arrays['loss_mask']
  assert mask.sum() == len(answer)
  # Loss sits where the *target* is an answer token: target index i is seq i + 1.
  first = len(prompt) - 1
  assert mask[:first].sum() == 0 and mask[first:first + len(answer)].all()
  np.testing.assert_array_equal(arrays['targets'][first:first + len(answer)], answer)
  assert (arrays['tokens'][2:2 + 16] == enc.image_id).all()  # after <s> <|user|>
  assert arrays['truncated'] == 0


def test_long_examples_are_dropped_or_cut(processor):
  _, proc = processor
  enc = dataclasses.replace(proc.encoder, too_long='drop')  # micro truncates
  long = [TURNS[0], {'role': 'assistant', 'text': 'word ' * 200}]
  with pytest.raises(schema.TooLong, match="record 'r2'.*max_len=40"):
    enc.training_arrays(long, 1, 40, 'r2')
  cut = dataclasses.replace(enc, too_long='truncate')
  arrays = cut.training_arrays(long, 1, 40, 'r2')
  assert arrays['tokens'].shape == (40,) and arrays['truncated'] == 1
  with pytest.raises(schema.TooLong, match="record 'r3'.*prompt alone.*max_len=18"):
    cut.training_arrays(TURNS, 1, 18, 'r3')


def test_corrupt_image_names_the_record(processor):
  _, proc = processor
  ex = schema.make_example(id='bad-1', split='train', report={'findings': 'x', 'impression': ''},
                           images=[{'data': b'\x89PNG not really', 'format': 'png',
                                    'kind': '2d', 'spacing': None}])
  with pytest.raises(schema.SchemaError, match="record 'bad-1': images"):
    proc(schema.encode(ex), None)


def test_batches_have_static_shapes_and_processes_get_disjoint_records(processor):
  config, proc = processor
  config.data.shuffle = False
  config.data.augment = True
  ds0 = pipeline.train_dataset(config, lambda tasks: proc, 'train', 0, 2)
  ds1 = pipeline.train_dataset(config, lambda tasks: proc, 'train', 1, 2)
  b0, b1 = ds0[0], ds1[0]
  assert b0['tokens'].shape == (4, config.data.max_len)
  assert b0['images'].shape == (4, 1, 32, 32, 1) and b0['image_mask'].all()  # gray8: 8-bit
  assert b0['images'].dtype == np.uint8 and b0['pixel_table'].shape == (4, 1, 256, 3)
  assert not any((b0['tokens'][i] == b1['tokens'][j]).all() and
                 np.allclose(b0['images'][i], b1['images'][j]) for i in range(4) for j in range(4))
  # Augmentation is a function of (seed, index): the same batch twice is identical.
  np.testing.assert_array_equal(ds0[0]['images'], b0['images'])


def test_every_read_thread_reads_at_once():
  """config.data.worker_threads=6 decodes 6 elements at once (grain uses no more threads
  than it reads ahead: with 2 ahead, 3 of them were busy)."""
  import threading
  import time

  import grain
  lock, busy, most = threading.Lock(), [0], [0]

  def slow(i):
    with lock:
      busy[0] += 1
      most[0] = max(most[0], busy[0])
    time.sleep(0.1)  # a film's decode
    with lock:
      busy[0] -= 1
    return np.full(4, i)

  it = pipeline.make_iterator(grain.MapDataset.range(1000).map(slow), 6)
  for i in range(18):
    np.testing.assert_array_equal(next(it), np.full(4, i))
  assert most[0] == 6, most


@pytest.mark.parametrize('threads,most', [(0, 1), (2, 5)])
def test_make_iterator_reads_ahead_only_what_its_threads_ask(threads, most):
  """worker_threads=0 reads in the calling thread; with threads, a couple of elements ahead.
  (iter() of a MapDataset is grain's default: 16 threads, 500 elements read ahead.)"""
  import threading
  import time

  import grain
  def readers():
    return {t for t in threading.enumerate() if t.name.startswith('grain-prefetch')}

  before = readers()
  calls = []
  ds = grain.MapDataset.range(10_000).map(lambda i: calls.append(i) or np.full(4, i))
  it = pipeline.make_iterator(ds, threads)
  np.testing.assert_array_equal(next(it), np.zeros(4))
  time.sleep(0.3)  # read-ahead threads, if any, get time to run
  assert len(calls) <= most, len(calls)
  assert bool(readers() - before) == bool(threads)
  assert it.get_state() == {'next_index': 1}
