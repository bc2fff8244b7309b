"""Held-out metrics count every record of the split once, whatever config.eval.batch_size:
the last batch is padded and padding rows weigh nothing (pipeline.eval_dataset)."""
import json

import jax
import numpy as np
import pytest

from configs import vqgan as vqgan_recipe
from radjax import run
from radjax.data import pipeline, schema, source
from radjax.eval.evaluators import codec, labels, loss
from tests.conftest import build_experiment, tiny_config
from tests.test_classify import classifier_micro


def _rows(ds) -> list[dict]:
  return [{k: v[i] for k, v in batch.items()} for batch in ds for i in range(len(batch['tokens']))]


def test_every_record_once_in_order_and_padding_weighs_nothing(demo_data):
  config = tiny_config(demo_data)
  task = run.make_task(config)
  records = source.open_split(demo_data, 'val')
  want = [task.processor()(records[i], None) for i in range(len(records))]  # 16
  rows = _rows(pipeline.eval_dataset(config, task.processor(), 'val', 6, 0, 1))
  assert len(rows) == 18  # three whole batches
  real = [r for r in rows if r[source.EVAL_MASK]]
  assert len(real) == 16
  for got, ex in zip(real, want):
    np.testing.assert_array_equal(got['tokens'], ex['tokens'])
    np.testing.assert_array_equal(got['loss_mask'], ex['loss_mask'])
  pad = [r for r in rows if not r[source.EVAL_MASK]]
  assert pad and all(not r['loss_mask'].any() for r in pad)
  # Two processes: the same number of whole batches each, every record once between them.
  parts = [list(pipeline.eval_dataset(config, task.processor(), 'val', 6, p, 2))
           for p in range(2)]
  assert [len(p) for p in parts] == [3, 3]
  assert all(len(b['tokens']) == 3 for p in parts for b in p)
  tokens = sorted(r['tokens'].tobytes() for p in parts for r in _rows(p) if r[source.EVAL_MASK])
  assert tokens == sorted(ex['tokens'].tobytes() for ex in want)


def test_a_too_long_record_is_left_out_once_not_replaced_by_a_copy(demo_data):
  config = tiny_config(demo_data)
  config.data.too_long = 'drop'
  records = source.open_split(demo_data, 'val')

  def usable(i):
    try:
      return task.processor()(records[i], None)
    except schema.Unusable:
      return None
  config.data.max_len = 512
  task = run.make_task(config)
  lengths = sorted(int(np.count_nonzero(usable(i)['tokens'])) for i in range(len(records)))
  config.data.max_len = lengths[len(lengths) // 2]  # about half of them too long
  task = run.make_task(config)
  want = [ex for ex in map(usable, range(len(records))) if ex is not None]
  assert 0 < len(want) < len(records)
  ds = pipeline.eval_dataset(config, task.processor(), 'val', 5, 0, 1)
  real = [r for r in _rows(ds) if r[source.EVAL_MASK]]
  assert [r['tokens'].tobytes() for r in real] == [ex['tokens'].tobytes() for ex in want]
  log = source.record_log(ds)
  assert len(log.dropped['too_long']) == len(records) - len(want)


def _metrics_by_batch_size(exp, evaluator, sizes):
  out = []
  for b in sizes:
    exp.config.eval.batch_size = b
    out.append(evaluator.run(exp.state.params, 0))
  return out


def _assert_same(results):
  first = results[0]
  for other in results[1:]:
    assert other.keys() == first.keys()
    for k in first:
      np.testing.assert_allclose(other[k], first[k], rtol=2e-5, atol=1e-6, err_msg=k)


def test_val_loss_does_not_depend_on_the_eval_batch_size(demo_data):
  config = tiny_config(demo_data)
  config.eval.num_loss_batches = 0
  exp = build_experiment(config, jax.devices()[:1])
  results = _metrics_by_batch_size(exp, loss.LossEvaluator(exp, 'val'), (16, 6, 5))
  _assert_same(results)
  # 12 of 16 (the last partial batch dropped) gives another number.
  exp.config.eval.num_loss_batches = 2
  assert loss.LossEvaluator(exp, 'val').run(exp.state.params, 0)['eval/val_loss'] != \
      pytest.approx(results[0]['eval/val_loss'], rel=1e-4)


def test_label_metrics_do_not_depend_on_the_eval_batch_size(demo_data):
  config = classifier_micro(demo_data)
  config.eval.num_loss_batches = 0
  exp = build_experiment(config, jax.devices()[:1])
  _assert_same(_metrics_by_batch_size(exp, labels.LabelEvaluator(exp, 'val'), (16, 6)))


def test_label_predictions_name_each_record_once_whatever_the_batch(demo_data, tmp_path):
  config = classifier_micro(demo_data)
  exp = build_experiment(config, jax.devices()[:1])
  ev = labels.LabelEvaluator(exp, 'val')
  records = ev.eval_set.records()
  examples = [schema.decode(records[i]) for i in range(len(records))]
  files = []
  for b in (16, 6):
    exp.config.eval.batch_size = b
    out = tmp_path / str(b)
    ev.run(exp.state.params, 0, out_dir=str(out))
    files.append([json.loads(line) for line in open(out / 'predictions.jsonl')])
  rows = files[0]
  assert [r['id'] for r in rows] == [ex['id'] for ex in examples]  # in order, no padding
  names = exp.task.targets.names
  for r, ex in zip(rows, examples):
    assert list(r['probabilities']) == list(names)
    if ex.get('labels'):
      assert r['labels'] == dict(zip(names, exp.task.targets(ex)['labels'].astype(int).tolist()))
    else:
      assert r['labels'] is None
  assert sum(sum((r['labels'] or {}).values()) for r in rows) > 0  # some positives
  for r, other in zip(rows, files[1]):
    assert r['id'] == other['id'] and r['labels'] == other['labels']
    np.testing.assert_allclose(list(r['probabilities'].values()),
                               list(other['probabilities'].values()), atol=1e-5)


def test_codec_metrics_do_not_depend_on_the_eval_batch_size(demo_data):
  config = vqgan_recipe.get_config('size=micro')
  config.data.dir = demo_data
  config.eval.num_loss_batches = 0
  config.eval.num_logged_examples = 0
  with jax.threefry_partitionable(False):  # XLA:CPU compiles it slowly; values don't matter
    exp = build_experiment(config, jax.devices()[:1])
  _assert_same(_metrics_by_batch_size(exp, codec.CodecEvaluator(exp, 'val'), (16, 6)))
