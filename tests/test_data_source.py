"""Reading damaged datasets from disk: errors name the shard file and record index, and
config.data.max_skipped_records skips undecodable records deterministically."""
import logging
import os
import shutil

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from data_prep import writer
from radjax.data import pipeline, schema, source
from tests.conftest import tiny_config


def _damaged_copy(demo_data, tmp_path, replace: dict[int, bytes]) -> tuple[str, str]:
  """A copy of the demo dataset whose train shard has records replaced by index."""
  out = str(tmp_path / 'damaged')
  shutil.copytree(demo_data, out)
  (shard,) = source.split_files(out, 'train')
  records = writer.read_records(shard)
  w = ArrayRecordWriter(shard, 'group_size:1')
  for i, raw in enumerate(records):
    w.write(replace.get(i, raw))
  w.close()
  return out, shard


def _bad_image(raw: bytes) -> bytes:
  ex = schema.decode(raw)
  ex['images'][0]['data'] = ex['images'][0]['data'][:60]
  return schema.encode(ex)


def _datasets(data_dir, max_skipped=0):
  config = tiny_config(data_dir)
  config.data.shuffle = False
  config.data.augment = False
  config.data.max_skipped_records = max_skipped
  from radjax import run
  task = run.make_task(config)
  return (pipeline.train_dataset(config, task.processor, 'train', 0, 1),
          pipeline.eval_dataset(config, task.processor(), 'train', 8, 0, 1))


def test_truncated_shard_names_the_file(demo_data, tmp_path):
  out = str(tmp_path / 'cut')
  shutil.copytree(demo_data, out)
  (shard,) = source.split_files(out, 'train')
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) // 2)
  with pytest.raises(source.DataError, match=f'{shard}: cannot open shard') as e:
    _datasets(out)
  # A build finding the folder reuses it: the remedy is said.
  assert f"the built dataset is damaged: delete '{out}' and build it again" in str(e.value)


def test_corrupt_chunk_names_the_file_and_record(demo_data, tmp_path):
  out = str(tmp_path / 'flip')
  shutil.copytree(demo_data, out)
  (shard,) = source.split_files(out, 'train')
  records = source.ShardSource([shard])
  size = os.path.getsize(shard)
  with open(shard, 'r+b') as f:  # scribble over the middle of the file
    f.seek(size // 2)
    f.write(b'\x00' * 64)
  records = source.ShardSource([shard])
  with pytest.raises(source.DataError, match=rf'{shard} record (\d+): cannot read') as e:
    for i in range(len(records)):
      records[i]
  assert f"delete '{out}' and build it again" in str(e.value)


def test_unparseable_record_names_the_file_and_index(demo_data, tmp_path):
  out, shard = _damaged_copy(demo_data, tmp_path, {3: b'\xc1 not msgpack'})
  train, evals = _datasets(out)
  with pytest.raises(source.DataError, match=rf'{shard} record 3: record <unparseable>'):
    train[0]
  with pytest.raises(source.DataError, match=rf'{shard} record 3: record <unparseable>'):
    evals[0]


def _malformed(raw: bytes, how: str) -> bytes:
  """A record another writer made without schema.validate: fields of the right top-level
  types whose elements are not what the pipeline reads."""
  ex = schema.decode(raw)
  if how == 'image':
    ex['images'][0] = 'cxr.png'
  elif how == 'turn':
    ex['conversation'] = [{'role': 'user'}]
  else:
    ex['report'] = {'findings': None, 'impression': 'x'}
  return schema.encode(ex)


@pytest.mark.parametrize('how, field', [('image', r'images\[0\]: not a map'),
                                        ('turn', r'conversation\[0\]\.text'),
                                        ('report', r'report\.findings')])
def test_a_malformed_record_names_its_field_and_is_skipped_as_undecodable(demo_data, tmp_path,
                                                                       how, field):
  raws = writer.read_records(source.split_files(demo_data, 'train')[0])
  rid = schema.decode(raws[2])['id']
  out, shard = _damaged_copy(demo_data, tmp_path, {2: _malformed(raws[2], how)})
  train, evals = _datasets(out)
  for ds in (train, evals):
    with pytest.raises(source.DataError, match=rf'{shard} record 2: record {rid!r}: {field}'):
      ds[0]
  skipping, _ = _datasets(out, max_skipped=1)
  assert skipping[0]['tokens'].shape[0] == 8


def test_skipped_records_are_counted_logged_and_deterministic(demo_data, tmp_path, caplog):
  raws = writer.read_records(source.split_files(demo_data, 'train')[0])
  bad_id = schema.decode(raws[5])['id']
  out, shard = _damaged_copy(demo_data, tmp_path, {3: b'\xc1', 5: _bad_image(raws[5])})
  clean, _ = _datasets(demo_data)
  with caplog.at_level(logging.WARNING):
    train, _ = _datasets(out, max_skipped=2)
    batch = train[0]
  logged = '\n'.join(r.getMessage() for r in caplog.records)
  assert f'{shard} record 3' in logged and f'record {bad_id!r}: images: undecodable' in logged
  # Element 3 is replaced by the next good one (4), element 5 by 6: a function of the
  # index alone, so a resumed run (or a second pass) sees the very same stream.
  expected = clean[0]
  keep = [0, 1, 2, 4, 4, 6, 6, 7]
  np.testing.assert_array_equal(batch['tokens'], expected['tokens'][keep])
  again, _ = _datasets(out, max_skipped=2)
  np.testing.assert_array_equal(again[0]['tokens'], batch['tokens'])
  # One more bad record than allowed stops the run, naming the knob.
  over, _ = _datasets(out, max_skipped=1)
  with pytest.raises(source.DataError, match='max_skipped_records=1'):
    over[0]


def test_skipping_survives_a_resume(demo_data, tmp_path):
  raws = writer.read_records(source.split_files(demo_data, 'train')[0])
  out, _ = _damaged_copy(demo_data, tmp_path, {9: _bad_image(raws[9]), 20: b'\xc1'})
  train, _ = _datasets(out, max_skipped=3)
  it = pipeline.make_iterator(train, 0)
  next(it)
  state = it.get_state()
  expected = [next(it)['tokens'] for _ in range(3)]
  again, _ = _datasets(out, max_skipped=3)
  resumed = pipeline.make_iterator(again, 0)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)['tokens'], want)


def test_a_path_that_is_no_dataset_says_which(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config\.data\.dir: '.*nowhere' is not a "
                                              'directory'):
    source.split_files(str(tmp_path / 'nowhere'), 'train', 'config.data.dir')
  with pytest.raises(FileNotFoundError, match='is no built dataset'):
    source.split_files(str(tmp_path), 'train', 'config.data.dir')


def test_the_skip_count_is_checkpointed_with_the_iterator(demo_data, tmp_path):
  """Records skipped before a checkpoint still count against max_skipped_records after
  the resume: rerunning the same command cannot beat the limit."""
  raws = writer.read_records(source.split_files(demo_data, 'train')[0])
  out, _ = _damaged_copy(demo_data, tmp_path, {1: _bad_image(raws[1]), 12: b'\xc1'})
  train, _ = _datasets(out, max_skipped=1)
  it = pipeline.make_iterator(train, 0)
  next(it)  # batch 0 holds record 1: one skipped, the limit reached
  state = it.get_state()
  assert list(state[source.IteratorWithRecordLog.KEY]['bad']) == [f'{out}/demo-train.'
                                                                  f'array_record-00000-of-00001'
                                                                  ' record 1']
  again, _ = _datasets(out, max_skipped=1)
  resumed = pipeline.make_iterator(again, 0)
  resumed.set_state(state)
  with pytest.raises(source.DataError, match='max_skipped_records=1'):
    next(resumed)  # batch 1 holds record 12: the second
  fresh = pipeline.make_iterator(_datasets(out, max_skipped=1)[0], 0)
  fresh.set_state({k: v for k, v in state.items() if k != source.IteratorWithRecordLog.KEY})
  next(fresh)  # a checkpoint from before the count was kept: it starts from none
