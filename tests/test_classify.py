"""Finding classifier (task 'classify'), its metrics, and the VLM's auxiliary label loss."""
import glob
import itertools
import json
import os
import re

import jax
import numpy as np
import pytest
import safetensors.numpy

from configs import classifier as classifier_config
from radjax import run
from radjax.convert import export
from radjax.core import recipe
from radjax.core import workdir as workdir_lib
from radjax.data import labels as labels_lib
from radjax.data import pipeline
from radjax.eval.metrics import classification
from radjax.train import loss as loss_lib
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


def test_box_targets_mark_the_patches_under_the_box():
  targets = labels_lib.LabelTargets(('Cardiomegaly', 'Lung Lesion', 'Pneumothorax'),
                                    box_labels=('Pneumothorax', 'Lung Lesion'), grid=4)
  assert targets.box_indices == (2, 1)
  # Columns 0.30-0.55 overlap patches 1-2 (0.25-0.75); rows 0.05-0.20 patch 0 only.
  ex = {'labels': {'Lung Lesion': 1},
        'boxes': [{'box': [0.30, 0.05, 0.55, 0.20], 'label': 'Lung Lesion', 'phrase': ''},
                  {'box': [0.0, 0.0, 1.0, 1.0], 'label': 'Cardiomegaly', 'phrase': ''}]}
  out = targets(ex)
  want = np.zeros((4, 4))
  want[0, 1:3] = 1
  np.testing.assert_array_equal(out['box_targets'][:, 1].reshape(4, 4), want)
  np.testing.assert_array_equal(out['box_targets'][:, 0], 0)  # no pneumothorax: all 0
  np.testing.assert_array_equal(out['box_mask'], [1, 1])
  # A positive without a box of its label: where it is is unknown, so it is masked out.
  assert targets({'labels': {'Pneumothorax': 1}})['box_mask'].tolist() == [0, 1]
  assert targets({'labels': {}})['box_mask'].tolist() == [0, 0]
  # 70 px in 16 px patches: the tower sees 64 px (4 patches); the box at 0.92-1.0 of the
  # image lies past the patches (it was put on the last one, 0.69-0.91 of the image).
  cut = labels_lib.LabelTargets(('Lung Lesion',), box_labels=('Lung Lesion',), grid=4,
                                patches_per_side=70 / 16)
  edge = {'labels': {'Lung Lesion': 1},
          'boxes': [{'box': [0.92, 0.0, 1.0, 0.1], 'label': 'Lung Lesion', 'phrase': ''},
                    {'box': [0.5, 0.0, 0.6, 0.1], 'label': 'Lung Lesion', 'phrase': ''}]}
  assert cut(edge)['box_targets'][:, 0].reshape(4, 4)[0].tolist() == [0, 0, 1, 0]


def test_box_token_loss_balances_the_patches_under_boxes_against_the_rest():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(2, 5, 3)).astype(np.float32)  # a class token, then 4 patches
  targets = np.zeros((2, 4, 2), np.float32)
  targets[0, 1, 0] = targets[1, 2:, 1] = 1  # [1, :, 0] and [0, :, 1]: no box there
  mask = np.array([[1, 0], [1, 1]], np.float32)
  got = loss_lib.box_token_losses(scores[..., [2, 0]], targets, mask)['loss_sum']
  p = 1 / (1 + np.exp(-scores[:, 1:][..., [2, 0]].astype(np.float64)))
  bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
  want = np.empty((2, 2))
  for b in range(2):
    for label in range(2):
      on = targets[b, :, label] > 0
      want[b, label] = (0.5 * (bce[b, on, label].mean() + bce[b, ~on, label].mean())
                        if on.any() else bce[b, :, label].mean())
  np.testing.assert_allclose(got, (want * mask).sum() / 2, rtol=1e-5)
  # One positive patch weighs as much as all the negatives together.
  assert abs(want[0, 0] - bce[0, :, 0].mean()) > 1e-3


@pytest.mark.parametrize('change,match', [
    (dict(box_token_labels=('Edema',)), 'box_token_labels'),
    (dict(augment=True), 'random crop'),
    (dict(label_loss_weight=0.0), 'label_loss_weight'),
])
def test_box_targets_refuse_configs_they_cannot_serve(demo_data, change, match):
  config = tiny_config(demo_data)
  config.data.label_names = DEMO_LABELS
  config.data.label_loss_weight = 1.0
  config.data.box_token_labels = ('Lung Lesion',)
  config.data.box_token_weight = 5.0
  config.data.update(change)
  with pytest.raises(ValueError, match=match):
    run.make_task(config)


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
  # Binary cross-entropy per label has no perplexity; its label accuracy stays.
  assert 'eval/val_perplexity' not in ev and 0 <= ev['eval/val_accuracy'] <= 1


def test_generate_on_a_classifier_gives_the_probabilities_its_evaluation_writes(
    demo_data, classifier_workdir, tmp_path, capsys):
  """--mode=generate (and chat) on a classifier workdir was an AttributeError traceback. Now
  generate prints each image file's probabilities: those eval writes for the same record."""
  from radjax.data import schema, source
  config = classifier_micro(demo_data)
  run.main(config, classifier_workdir, 'eval')
  step = workdir_lib.latest_step(classifier_workdir)
  with open(os.path.join(classifier_workdir, 'eval', str(step), 'predictions.jsonl')) as f:
    want = {row['id']: row['probabilities'] for row in map(json.loads, f)}
  records = source.open_split(demo_data, config.eval.split)
  paths = []
  for i in range(3):
    example = schema.decode(records[i])
    paths.append(str(tmp_path / f"{example['id']}.png"))
    with open(paths[-1], 'wb') as f:
      f.write(example['images'][0]['data'])
  capsys.readouterr()
  texts = run.main(config, classifier_workdir, 'generate', paths)
  assert '== ' + paths[0] in capsys.readouterr().out
  for path, text in zip(paths, texts):
    got = dict(line.split(': ') for line in text.splitlines())
    expected = want[os.path.basename(path)[:-len('.png')]]
    assert list(got) == list(expected)
    np.testing.assert_allclose([float(v) for v in got.values()], list(expected.values()),
                               atol=1e-3)
  with pytest.raises(ValueError, match='a finding classifier answers no prompts'):
    run.main(config, classifier_workdir, 'chat', paths[:1])
  # A blank --prompt (any workdir) was a blank user turn, answered as if asked.
  with pytest.raises(ValueError, match=r"--prompt='  \\n' has no words"):
    run.main(config, classifier_workdir, 'generate', paths[:1], '  \n')


def test_vlm_tower_starts_from_a_classifier_workdir(demo_data, classifier_workdir):
  config = tiny_config(demo_data)
  config.model.vision.init_from = classifier_workdir
  exp = build_experiment(config, jax.devices()[:1])
  want = workdir_lib.load_params(classifier_workdir, path=('vision',))
  got = jax.device_get(exp.state.params['vision'])
  assert jax.tree.structure(got) == jax.tree.structure(want) and jax.tree.leaves(want)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(a, b)


def test_auxiliary_label_loss_trains_the_head_and_leaves_eval_loss_alone(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.data.label_names = DEMO_LABELS
  config.data.label_loss_weight = 1.0
  config.data.box_token_labels = ('Lung Lesion', 'Consolidation')
  config.data.box_token_weight = 4.0
  config.train.num_steps, config.train.log_every = 16, 1
  config.train.checkpoint_every = 16
  config.eval.evaluators = ('loss',)  # generation is tested elsewhere; here only the losses
  config.optim.warmup_steps = 2
  workdir = str(tmp_path / 'aux')
  run.main(config, workdir, 'train')
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  for key in ('train/label_loss', 'train/box_loss'):
    values = [r[key] for r in rows if key in r]
    assert len(values) == 16 and np.mean(values[-4:]) < np.mean(values[:4]), key
  # train/loss = report loss + weight x (label loss + box weight x box loss); held-out
  # loss is the report loss alone.
  exp = build_experiment(config, jax.devices()[:1])
  task = exp.task
  batch = next(iter(pipeline.eval_dataset(config, task.processor(), 'val', 8)))
  params = exp.state.params
  plain = task.loss(exp.model, params, batch, None)
  full = task.train_loss(exp.model, params, batch, None)
  assert full['box_loss_sum'] > 0
  np.testing.assert_allclose(full['loss_sum'] - plain['loss_sum'],
                             full['label_loss_sum'] + 4.0 * full['box_loss_sum'], rtol=1e-5)
  assert 'label_loss_sum' not in plain
  # The head is training-only: the Llava export leaves it out.
  assert 'label_head' in params
  export.export_hf(config, jax.device_get(params), str(tmp_path / 'hf'))
  names = [k for f in os.listdir(tmp_path / 'hf') if f.endswith('.safetensors')
           for k in safetensors.numpy.load_file(str(tmp_path / 'hf' / f))]
  assert names and not [n for n in names if 'label' in n]




def test_pre_stage_trains_the_tower_first_in_the_same_run(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.train.pre_stage = 'configs/classifier.py:size=micro'
  # No data.dir here: the stage names the same builder, so it reads this run's dataset.
  config.train.pre_stage_set = (('train.num_steps', 6), ('train.eval_every', 6),
                                ('eval.batch_size', 8))
  config.optim.param_groups = (('vision/.*', 'frozen'), ('.*', 1.0))
  config.train.num_steps = config.train.checkpoint_every = 2
  config.eval.evaluators = ('loss',)
  workdir = str(tmp_path / 'vlm')
  run.main(config, workdir, 'train')
  stage_dir = os.path.join(workdir, 'pre_stage')
  assert workdir_lib.latest_step(stage_dir) == 6
  assert workdir_lib.load_config(workdir).model.vision.init_from == stage_dir
  # The VLM's (frozen) tower is the pre-stage's, whose head trained on this config's tower.
  want = workdir_lib.load_params(stage_dir, path=('vision',))
  got = workdir_lib.load_params(workdir, path=('vision',))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_array_equal(a, b)
  assert np.shape(want['patch_embed']['kernel'])[0] == config.model.vision.patch_size
  # A resumed run finds the stage done and writes nothing there (what run.main does first;
  # a rerun refused for a changed knob of the main stage then says nothing was written).
  def contents():
    return {p: (os.path.getmtime(p), open(p, 'rb').read())
            for p in glob.glob(f'{stage_dir}/**', recursive=True) if os.path.isfile(p)}
  before = contents()
  again = tiny_config(demo_data)
  again.train.pre_stage = config.train.pre_stage
  again.train.pre_stage_set = config.train.pre_stage_set
  assert run.train_pre_stage(again, workdir)
  assert contents() == before
  assert again.model.vision.init_from == stage_dir
  # A stage knob changed: the fix named is this run's own config, not the stage dir's.
  again.train.pre_stage_set = config.train.pre_stage_set + (('train.batch_size', 16),)
  with pytest.raises(workdir_lib.WorkdirError, match=re.escape(
      f'configs/workdir.py:{workdir}) or a new --workdir (the stage is config.train.pre_stage')):
    run.train_pre_stage(again, workdir)
  assert contents() == before
  bad = tiny_config(demo_data)
  bad.train.pre_stage = 'configs/classifier.py:size=micro'
  bad.train.pre_stage_set = (('train.num_stepz', 6),)
  with pytest.raises(ValueError, match='num_stepz'):
    run.main(bad, str(tmp_path / 'bad'), 'train')
  for pairs, message in [((('train.num_steps', 'abc'),), "'abc' does not fit"),
                         (('train.num_steps', 3), 'is not a .key, value. pair')]:
    bad.train.pre_stage_set = pairs
    with pytest.raises(ValueError, match=message):
      run.pre_stage(bad, str(tmp_path / 'bad'))
  # The stage's batch that does not fit the mesh is named as the stage's, before training.
  bad.train.pre_stage_set = (('train.batch_size', 3),)
  with pytest.raises(ValueError, match=r"batch_size=3 does not split .* \(in the pre-stage "
                     r"'configs/classifier.py:size=micro'"):
    run.main(bad, str(tmp_path / 'bad'), 'train')
  assert not os.path.exists(tmp_path / 'bad' / 'pre_stage')


@pytest.mark.parametrize('spec,message', [
    ('configs/common.py', r"'configs/common.py' has no get_config\(arg\)"),
    ('README.md', "'README.md' is not a Python recipe file"),
    ('configs/classifier.py:size=tny', "config argument size='tny'"),
    ('configs/no_such.py', "no file 'configs/no_such.py'")])
def test_a_pre_stage_that_is_no_recipe_is_one_error_naming_the_knob(tmp_path, spec, message):
  """A helper module or any other file as config.train.pre_stage was an AttributeError
  traceback; a recipe argument it refuses did not say which knob gave it."""
  config = tiny_config()
  config.train.pre_stage = spec
  with pytest.raises((ValueError, FileNotFoundError),
                     match=re.escape(f'config.train.pre_stage={spec!r}: ') + message):
    run.pre_stage(config, str(tmp_path))


@pytest.mark.parametrize('part', ['llm', 'projector'])
def test_a_pre_stage_part_the_stage_does_not_train_is_refused_first(demo_data, tmp_path, part):
  """Every config has every model.<part> section: a classifier stage with
  pre_stage_part='llm' trained whole (the demo's 600 steps), and only then did the run fail
  to start its llm from a classifier workdir."""
  config = tiny_config(demo_data)
  config.train.pre_stage = 'configs/classifier.py:size=micro'
  config.train.pre_stage_part = part
  with pytest.raises(ValueError, match=rf"config.train.pre_stage_part='{part}': not a model "
                     r'part of both this config \(vlm\) and the pre-stage .*\(classifier\)'):
    run.pre_stage(config, str(tmp_path))


def test_pre_stage_reads_this_runs_dataset_where_both_name_its_builder(demo_data, tmp_path):
  config = tiny_config(demo_data)
  config.train.pre_stage = 'configs/classifier.py:size=micro'
  own = classifier_config.get_config('size=micro').data
  assert own.builder == config.data.builder and own.dir != demo_data
  stage, _ = run.pre_stage(config, str(tmp_path))
  assert stage.data.dir == demo_data
  assert stage.data.builder_kwargs.to_dict() == config.data.builder_kwargs.to_dict() != \
      own.builder_kwargs.to_dict()
  config.train.pre_stage_set = (('data.dir', str(tmp_path / 'elsewhere')),)  # it still wins
  assert run.pre_stage(config, str(tmp_path))[0].data.dir == str(tmp_path / 'elsewhere')
  config.train.pre_stage_set = ()
  config.data.builder = 'mimic_cxr'  # another dataset: the stage keeps its own
  stage, _ = run.pre_stage(config, str(tmp_path))
  assert stage.data.dir == own.dir and stage.data.builder_kwargs.to_dict() == \
      own.builder_kwargs.to_dict()


@pytest.mark.parametrize('key,value,error', [
  ('data.too_long', 'cut', "config.data.too_long: 'cut'"),
  ('eval.evaluators', ('bleu',), r"config\.eval\.evaluators: \['bleu'\] not in"),
  ('model.llm.init_from', '/no/such/llm', r"config\.model\.llm\.init_from='/no/such/llm'")])
def test_the_main_stage_is_checked_before_its_pre_stage_trains(demo_data, tmp_path, key, value,
                                                               error):
  config = tiny_config(demo_data)
  config.train.pre_stage = 'configs/classifier.py:size=micro'
  config.train.pre_stage_set = (('data.dir', demo_data), ('train.num_steps', 2),
                                ('eval.batch_size', 8))
  recipe.set_value(config, key, value, 'the test')
  workdir = str(tmp_path / 'vlm')
  with pytest.raises((ValueError, FileNotFoundError), match=error):
    run.main(config, workdir, 'train')
  assert not os.path.exists(os.path.join(workdir, 'pre_stage'))  # nothing trained first


def test_a_pre_stage_that_stops_early_starts_no_main_stage(demo_data, tmp_path, monkeypatch):
  """Preempted in the pre-stage (here: it stops at step 2 of 6), the run ends there; the
  main stage does not train on a half-trained tower."""
  from radjax.train import loop
  real_train = loop.train

  def stops_at_2(stage, workdir, task, devices=None):
    stage = stage.copy_and_resolve_references()  # the caller's config still asks for 6
    stage.train.num_steps = 2
    return real_train(stage, workdir, task, devices)

  config = tiny_config(demo_data)
  config.train.pre_stage = 'configs/classifier.py:size=micro'
  config.train.pre_stage_set = (('data.dir', demo_data), ('train.num_steps', 6),
                                ('train.checkpoint_every', 2), ('eval.batch_size', 8))
  config.eval.evaluators = ('loss',)
  workdir = str(tmp_path / 'vlm')
  monkeypatch.setattr(run.loop, 'train', stops_at_2)
  assert run.main(config, workdir, 'train') == {}
  assert workdir_lib.latest_step(os.path.join(workdir, 'pre_stage')) == 2
  assert not workdir_lib.has_checkpoints(workdir) and not config.model.vision.init_from


def test_a_probability_at_the_threshold_is_positive():
  s = classification.probability_scores([[0.5], [0.2]], [[1], [0]], ['A'], threshold=0.5)
  assert s['A/recall'] == 1.0 and s['A/precision'] == 1.0


def test_label_loss_weight_scales_the_label_and_box_terms(demo_data):
  """train/loss = report loss + label_loss_weight x (label loss + box weight x box loss);
  the test above uses label_loss_weight 1.0, where dropping the weight changes nothing."""
  config = tiny_config(demo_data)
  config.data.label_names = DEMO_LABELS
  config.data.label_loss_weight = 0.5
  config.data.box_token_labels = ('Lung Lesion', 'Consolidation')
  config.data.box_token_weight = 4.0
  exp = build_experiment(config, jax.devices()[:1])
  task, params = exp.task, exp.state.params
  batch = next(iter(pipeline.eval_dataset(config, task.processor(), 'val', 8)))
  plain = task.loss(exp.model, params, batch, None)
  full = task.train_loss(exp.model, params, batch, None)
  assert full['box_loss_sum'] > 0 and full['label_loss_sum'] > 0
  np.testing.assert_allclose(full['loss_sum'] - plain['loss_sum'],
                             0.5 * (full['label_loss_sum'] + 4.0 * full['box_loss_sum']),
                             rtol=1e-5)
