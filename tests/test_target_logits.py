"""config.data.max_target_tokens: logits only at the answer positions give the loss and
gradients of logits everywhere; the data caps an example's answer tokens."""
import jax
import numpy as np
import pytest
from conftest import build_experiment, tiny_config

from radjax import run
from radjax.data import pipeline, schema

DEMO_LABELS = ('Cardiomegaly', 'Pleural Effusion', 'Pneumothorax', 'Lung Lesion',
               'Consolidation')


def _loss_and_grads(config, method):
  exp = build_experiment(config, jax.devices()[:1])
  task = exp.task
  batch = next(iter(pipeline.eval_dataset(config, task.processor(), 'val', 8)))
  fn = getattr(task, method)

  def loss_sum(params):
    sums = fn(exp.model, params, batch, None)
    return sums['loss_sum'], sums

  (_, sums), grads = jax.jit(jax.value_and_grad(loss_sum, has_aux=True))(exp.state.params)
  return batch, sums, grads


@pytest.mark.parametrize('method', ['loss', 'train_loss'])
def test_logits_at_the_answer_equal_logits_everywhere(demo_data, method):
  config = tiny_config(demo_data)
  if method == 'train_loss':  # the auxiliary label head's forward (VLM.with_labels)
    config.data.label_names, config.data.label_loss_weight = DEMO_LABELS, 1.0
  batch, want, want_grads = _loss_and_grads(config, method)
  most = int(np.max(np.sum(batch['loss_mask'] > 0, axis=1)))
  assert most < config.data.max_len // 2  # the saving is real: most positions carry none
  config.data.max_target_tokens = most
  _, got, got_grads = _loss_and_grads(config, method)
  for key in ('loss_sum', 'weight_sum', 'accuracy_sum'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  for path, a in jax.tree_util.tree_leaves_with_path(want_grads):
    b = got_grads
    for k in path:
      b = b[k.key]
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def _encoder(demo_data, too_long):
  config = tiny_config(demo_data)
  config.data.max_len, config.data.max_target_tokens = 64, 5
  config.data.too_long = too_long
  return run.make_task(config).encoder


TURNS = [{'role': 'user', 'text': 'Findings?'},
         {'role': 'assistant', 'text': 'The heart is normal in size. The lungs are clear.'}]


def test_an_answer_over_the_cap_is_dropped_by_name(demo_data):
  with pytest.raises(schema.TooLong, match=r"record 'r7'.*max_target_tokens=5"):
    _encoder(demo_data, 'drop').training_arrays(TURNS, 0, 64, 'r7')


def test_an_answer_over_the_cap_is_truncated_to_it(demo_data):
  encoder = _encoder(demo_data, 'truncate')
  full = encoder.training_arrays(TURNS, 0, 64, 'r7')  # the cap is not in training_arrays' args
  assert full['truncated'] == 1 and np.sum(full['loss_mask'] > 0) == 5
  encoder.max_targets = 0
  whole = encoder.training_arrays(TURNS, 0, 64, 'r7')
  assert whole['truncated'] == 0 and np.sum(whole['loss_mask'] > 0) > 5
  n = int(np.flatnonzero(full['loss_mask'])[-1]) + 1  # the capped example is a prefix
  np.testing.assert_array_equal(full['tokens'][:n], whole['tokens'][:n])
  np.testing.assert_array_equal(full['loss_mask'][:n], whole['loss_mask'][:n])
  assert not full['loss_mask'][n:].any()


def test_the_cap_refuses_packed_rows(demo_data):
  config = tiny_config(demo_data)
  config.data.max_target_tokens, config.data.pack = 40, True
  with pytest.raises(ValueError, match='max_target_tokens=40'):
    run.make_task(config)
