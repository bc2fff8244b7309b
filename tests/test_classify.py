"""Finding classifier (task 'classify'), its metrics, and the VLM's auxiliary label loss."""
import itertools
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy

from configs import classifier as classifier_config
from radjax import run
from radjax.convert import export
from radjax.core import workdir as workdir_lib
from radjax.data import labels as labels_lib
from radjax.data import pipeline
from radjax.eval.metrics import classification
from tests.conftest import build_experiment, tiny_config

DEMO_LABELS = ('Cardiomegaly', 'Pleural Effusion', 'Pneumothorax', 'Lung Lesion',
               'Consolidation')


def pairwise_auroc(scores, truth):
  """The definition: P(score of a positive > score of a negative), ties half."""
  pos = [s for s, t in zip(scores, truth) if t]
  neg = [s for s, t in zip(scores, truth) if not t]
  wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_auroc_matches_the_pairwise_definition_with_ties():
  rng = np.random.default_rng(0)
  for _ in range(5):
    scores = rng.integers(0, 6, 40) / 5  # many ties
    truth = rng.random(40) < 0.3
    assert classification.auroc(scores, truth) == pytest.approx(pairwise_auroc(scores, truth))
  assert np.isnan(classification.auroc([0.1, 0.2], [True, True]))
  scores = classification.probability_scores(np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.1]]),
                                             np.array([[1, 0], [0, 1], [1, 0]]), ('a', 'b'))
  assert scores['a/auroc'] == 1.0 and scores['micro_f1'] == 1.0


def test_label_targets_read_chexpert_conventions():
  targets = labels_lib.LabelTargets(('Cardiomegaly', 'Edema', 'Pneumothorax'), uncertain_as=0)
  out = targets({'labels': {'Cardiomegaly': 1, 'Edema': -1}})
  np.testing.assert_array_equal(out['labels'], [1, 0, 0])  # -1 -> 0, unmentioned -> 0
  assert out['label_mask'] == 1
  assert targets({'labels': {}})['label_mask'] == 0  # no labels: masked, not all-negative
  with pytest.raises(ValueError, match='config.data.label_names'):
    labels_lib.check_names(('Cardiomegaly', 'Heart failure'))


def classifier_micro(data_dir):
  c = classifier_config.get_config('size=micro')
  c.data.dir = data_dir
  c.train.num_steps, c.train.eval_every, c.train.checkpoint_every = 12, 12, 12
  c.train.async_checkpoint = False
  c.eval.batch_size, c.eval.num_loss_batches = 8, 2
  c.optim.warmup_steps = 2
  return c


@pytest.fixture(scope='module')
def classifier_workdir(demo_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('cls'))
  run.main(classifier_micro(demo_data), workdir, 'train')
  return workdir


def test_classifier_trains_and_reports_per_finding_metrics(classifier_workdir):
  rows = [json.loads(line) for line in open(os.path.join(classifier_workdir, 'metrics.jsonl'))]
  losses = [r['train/loss'] for r in rows if 'train/loss' in r]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  ev = [r for r in rows if 'eval/labels_micro_f1' in r][-1]
  for name in DEMO_LABELS:
    assert f'eval/labels_{name}/auroc' in ev and f'eval/labels_{name}/f1' in ev
  assert ev['eval/labels_num_examples'] == 16  # every labelled val record


def test_vlm_tower_starts_from_a_classifier_workdir(demo_data, classifier_workdir):
  config = tiny_config(demo_data)
  config.model.vision.init_from = classifier_workdir
  exp = build_experiment(config, jax.devices()[:1])
  want = workdir_lib.load_params(classifier_workdir, path=('vision',))
  got = jax.device_get(exp.state.params['vision'])
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)


def test_auxiliary_label_loss_trains_the_head_and_leaves_eval_loss_alone(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.data.label_names = DEMO_LABELS
  config.data.label_loss_weight = 1.0
  config.train.num_steps, config.train.log_every = 16, 1
  config.optim.warmup_steps = 2
  workdir = str(tmp_path / 'aux')
  run.main(config, workdir, 'train')
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  label = [r['train/label_loss'] for r in rows if 'train/label_loss' in r]
  assert len(label) == 16 and np.mean(label[-4:]) < np.mean(label[:4])
  # train/loss = report loss + weight x label loss; held-out loss is the report loss alone.
  exp = build_experiment(config, jax.devices()[:1])
  task = exp.task
  batch = next(iter(pipeline.eval_dataset(config, task.processor(), 'val', 8)))
  params = exp.state.params
  plain = task.loss(exp.model, params, batch, None)
  full = task.train_loss(exp.model, params, batch, None)
  np.testing.assert_allclose(full['loss_sum'] - plain['loss_sum'],
                             full['label_loss_sum'], rtol=1e-5)
  assert 'label_loss_sum' not in plain
  # The head is training-only: the Llava export leaves it out.
  assert 'label_head' in params
  export.export_hf(config, jax.device_get(params), str(tmp_path / 'hf'))
  names = [k for f in os.listdir(tmp_path / 'hf') if f.endswith('.safetensors')
           for k in safetensors.numpy.load_file(str(tmp_path / 'hf' / f))]
  assert names and not [n for n in names if 'label' in n]


