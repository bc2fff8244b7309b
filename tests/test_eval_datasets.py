"""config.eval.datasets: each evaluator reads its own dataset (a mixture component or a
dir, a split, a subset drawn by a seed); empty, every evaluator reads the default eval
dataset as before (radjax/eval/evaluators/eval_sets.py)."""
import json
import os
import types

import jax
import numpy as np
import pytest

from data_prep import writer
from radjax.core import defaults
from radjax.data import instructions, mixture, schema, source
from radjax.eval import evaluators
from radjax.eval.evaluators import eval_sets
from tests.conftest import build_experiment, tiny_config

TASK = types.SimpleNamespace(evaluators=('loss', 'reports'))


def _dataset(path, prefix: str, n: int, split: str = 'val') -> str:
  """n records '<prefix>-<i>' with a report and a label each."""
  os.makedirs(path, exist_ok=True)
  with writer.ShardedWriter(path, split, 1, validate=lambda ex: None) as w:
    for i in range(n):
      w.write(schema.make_example(id=f'{prefix}-{i}', split=split,
                                  report={'findings': f'{prefix} {i}.', 'impression': ''},
                                  labels={'Cardiomegaly': i % 2}))
  return path


@pytest.fixture(scope='module')
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('evalsets')
  return {'a': _dataset(str(root / 'a'), 'a', 12), 'b': _dataset(str(root / 'b'), 'b', 20),
          'b_test': _dataset(str(root / 'b'), 'bt', 7, split='test'),
          'c': _dataset(str(root / 'c'), 'c', 9)}


def _config(dirs, **datasets):
  c = defaults.get_config()
  c.eval.batch_size = 4
  c.data.mixture.a = dict(dir=dirs['a'], tasks=('report',))
  c.data.mixture.b = dict(dir=dirs['b'], tasks=('classification', 'vqa'))
  for name, spec in datasets.items():
    c.eval.datasets[name] = spec
  return c


def _ids(eval_set) -> list[str]:
  records = eval_set.records()
  return [schema.decode(records[i])['id'] for i in range(len(records))]


def test_without_datasets_every_evaluator_reads_the_default_as_before(dirs):
  config = _config(dirs)
  for name in evaluators.EVALUATORS:
    s = eval_sets.resolve(config, name, 'val')
    assert (s.dir, s.tasks, s.kind, s.split, s.given) == (
        mixture.eval_dir(config), mixture.eval_tasks(config), 'image', 'val', False)
  assert _ids(eval_sets.resolve(config, 'reports', 'val')) == [f'a-{i}' for i in range(12)]
  assert evaluators.names(config, TASK) == ('loss', 'reports')
  evaluators.check_split(config, 'val', ('loss', 'reports'))


def test_a_component_a_dir_a_split_and_a_drawn_subset(dirs):
  config = _config(dirs, classification=dict(component='b'), vqa=dict(dir=dirs['c']),
                   grounding=dict(component='b', split='test'),
                   loss=dict(max_records=5, seed=4))
  s = eval_sets.resolve(config, 'classification', 'val')
  assert (s.dir, s.tasks, s.knob) == (dirs['b'], ('classification', 'vqa'),
                                      'config.data.mixture.b.dir')
  assert _ids(s) == [f'b-{i}' for i in range(20)]
  s = eval_sets.resolve(config, 'vqa', 'val')
  assert (s.dir, s.tasks, s.knob) == (dirs['c'], ('report',), 'config.eval.datasets.vqa.dir')
  # split: read instead of config.eval.split (VinDr-CXR has no val).
  assert _ids(eval_sets.resolve(config, 'grounding', 'val')) == [f'bt-{i}' for i in range(7)]
  # Neither component nor dir: the default dataset, 5 of its records drawn with seed 4, in
  # record order, the same whatever config.seed is; another seed draws others.
  drawn = _ids(eval_sets.resolve(config, 'loss', 'val'))
  assert len(drawn) == 5 and drawn == sorted(drawn, key=lambda r: int(r.split('-')[1]))
  assert set(drawn) < {f'a-{i}' for i in range(12)}
  config.seed = 123
  assert _ids(eval_sets.resolve(config, 'loss', 'val')) == drawn
  config.eval.datasets.loss.seed = 5
  assert _ids(eval_sets.resolve(config, 'loss', 'val')) != drawn
  # Unlisted evaluators keep the default.
  assert not eval_sets.resolve(config, 'reports', 'val').given


@pytest.mark.parametrize('name,spec,match', [
    ('grounding_typo', dict(component='b'),
     r'config\.eval\.datasets\.grounding_typo: not an evaluator \(known: .*classification'),
    ('classification', dict(component='nope'),
     r"config\.eval\.datasets\.classification\.component: 'nope' is not a component of "
     r'config\.data\.mixture \(a, b\)'),
    ('classification', dict(component='b', dirr='x'),
     r'config\.eval\.datasets\.classification\.dirr: unknown key'),
    ('classification', dict(component='b', dir='x'),
     r'config\.eval\.datasets\.classification: both component'),
    ('vqa', dict(component='b', max_records=-1),
     r'config\.eval\.datasets\.vqa\.max_records: expected an integer >= 0'),
    ('vqa', 'b', r'config\.eval\.datasets\.vqa: expected dict'),
])
def test_a_bad_entry_is_an_error_naming_its_key(dirs, name, spec, match):
  config = _config(dirs, **{name: spec})
  with pytest.raises(ValueError, match=match):
    evaluators.names(config, TASK)


def test_a_dataset_without_the_split_or_records_fails_before_training(dirs, tmp_path):
  config = _config(dirs, vqa=dict(dir=dirs['c'], split='test'))
  with pytest.raises(FileNotFoundError, match=r'config\.eval\.datasets\.vqa\.dir'):
    evaluators.check_split(config, 'val', ('loss', 'vqa'))
  # Smaller than a batch is fine (the last batch is padded); no records is not.
  config = _config(dirs, vqa=dict(component='b', max_records=2),
                   loss=dict(component='b', max_records=2, seed=9))
  evaluators.check_split(config, 'val', ('loss', 'vqa'))
  config = _config(dirs, loss=dict(dir=_dataset(str(tmp_path / 'e'), 'e', 0)))
  with pytest.raises(ValueError, match=r"eval split 'val' of .*e \(config\.eval\.datasets"
                     r"\.loss\.dir, read by loss\) has no records"):
    evaluators.check_split(config, 'val', ('loss',))


def _other(demo_data, path: str, n: int) -> str:
  """n of the demo's test records as the val split of another dataset, ids 'other-<i>'."""
  records = source.open_split(demo_data, 'test')
  os.makedirs(path, exist_ok=True)
  with writer.ShardedWriter(path, 'val', 1) as w:
    for i in range(n):
      assert w.write({**schema.decode(records[i]), 'id': f'other-{i}', 'split': 'val'})
  return path


def _rows(out_dir: str, name: str) -> list[dict]:
  with open(os.path.join(out_dir, name)) as f:
    return [json.loads(line) for line in f]


def test_two_evaluators_score_two_datasets(demo_data, tmp_path):
  """reports on the demo's val split (the default eval dataset), classification on another
  dataset's (a mixture component), vqa on a subset of it given by dir, loss on 8 drawn
  demo records: each prediction file holds its own dataset's records and reference
  answers (today's single eval dataset would give classification the demo's 8)."""
  other = _other(demo_data, str(tmp_path / 'other'), 5)
  config = tiny_config(demo_data)
  config.data.mixture.demo = dict(dir=demo_data, tasks=tuple(config.data.tasks))
  config.data.mixture.other = dict(dir=other, tasks=('classification',))
  config.eval.evaluators = ('loss', 'reports', 'classification', 'vqa')
  config.eval.datasets.loss = dict(component='demo', max_records=8, seed=2)
  config.eval.datasets.classification = dict(component='other')
  config.eval.datasets.vqa = dict(dir=other, max_records=3, seed=1)
  config.eval.num_generate, config.eval.max_new_tokens, config.eval.meteor = 8, 4, False
  config.eval.batch_size = 8
  exp = build_experiment(config, jax.devices()[:1])
  evs = evaluators.make(exp, 'val')
  out = str(tmp_path / 'eval')
  metrics = evaluators.run_all(evs, exp.state.params, 0, out_dir=out)
  assert 'eval/classification_micro_f1' in metrics and 'eval/vqa_accuracy' in metrics
  assert np.isfinite(metrics['eval/val_loss'])  # one batch: the 8 records drawn

  options = instructions.options_from_config(config.data.task_options)

  def references(data_dir, task, ids=None):
    recs = source.open_split(data_dir, 'val')
    exs = [schema.decode(recs[i]) for i in range(len(recs))]
    return {ex['id']: instructions.reference(instructions.TASKS[task](ex, None, options))[1]
            for ex in exs if ids is None or ex['id'] in ids}

  demo_val = source.open_split(demo_data, 'val')
  reports = _rows(out, 'predictions.jsonl')
  assert len(reports) == 8  # num_generate of the demo's 16 val records
  assert {r['id'] for r in reports} <= {schema.decode(demo_val[i])['id']
                                        for i in range(len(demo_val))}
  classification = _rows(out, 'predictions_classification.jsonl')
  assert len(classification) == 5  # every record of the other dataset's val split
  want = references(other, 'classification')
  assert {r['id']: r['reference'] for r in classification} == want
  vqa = _rows(out, 'predictions_vqa.jsonl')
  drawn = {f'other-{i}' for i in eval_sets.subset(5, 3, 1)}
  assert len(vqa) == 3 and {r['id']: r['reference'] for r in vqa} == references(
      other, 'vqa', drawn)


def test_the_labels_evaluator_on_a_task_without_label_predictions_is_named(dirs):
  """A VLM with the auxiliary label head passed names() and crashed at the first
  evaluation ('ImageTextToText' has no predict)."""
  config = _config(dirs)
  config.eval.evaluators = ('loss', 'labels')
  with pytest.raises(ValueError, match=r"'labels' scores a finding classifier"):
    evaluators.names(config, TASK)
  classifier = types.SimpleNamespace(evaluators=('labels',), predict=lambda *a: None)
  assert evaluators.names(config, classifier) == ('loss', 'labels')


def test_vqa_asks_each_record_one_question_whatever_vqa_questions_trains(demo_data,
                                                                         monkeypatch):
  """With task_options.vqa_questions=3 the scored prompt held two earlier questions and
  their reference answers (labels of related findings) before the scored one."""
  from radjax.core import defaults
  from radjax.eval.evaluators import answers, instruction
  monkeypatch.setattr(answers, 'Answerer', lambda exp: None)  # no model: prompts only
  config = defaults.get_config()
  config.data.dir, config.eval.num_generate = demo_data, 8
  config.data.task_options.vqa_questions = 3
  ev = instruction.InstructionEvaluator(types.SimpleNamespace(config=config), 'val', 'vqa')
  assert len(ev.items) == 8
  for _, prompt, answer in ev.items:
    assert [t['role'] for t in prompt] == ['user'] and answer in ('Yes.', 'No.')


def test_an_instruction_evaluator_no_record_serves_fails_before_training(dirs):
  """Grounding on records without boxes failed at the first evaluation, after training."""
  config = _config(dirs, grounding=dict(component='a'))
  with pytest.raises(ValueError, match=r"has 'grounding' but no record of split 'val' of "
                                       r".* can serve instruction task"):
    evaluators.check_split(config, 'val', ('loss', 'grounding'))
  evaluators.check_split(config, 'val', ('loss', 'vqa'))  # b's labels serve it


def test_reports_scores_the_first_records_that_have_one(tmp_path):
  """Of the first num_generate records, those with a report: 1 of 4 here, where every other
  evaluator takes the first 4 it can score (README)."""
  from radjax.eval.evaluators import reports
  path = str(tmp_path / 'mixed')
  os.makedirs(path)
  with writer.ShardedWriter(path, 'val', 1, validate=lambda ex: None) as w:
    for i in range(8):
      text = f'finding {i}.' if i >= 3 else ''
      w.write(schema.make_example(id=f'm-{i}', split='val',
                                  report={'findings': text, 'impression': ''}))
  picked = reports.examples_with_reports(source.open_split(path, 'val'), 4)
  assert [ex['id'] for ex in picked] == ['m-3', 'm-4', 'm-5', 'm-6']


def test_an_evaluation_folder_holds_one_evaluation_and_json_without_nan(tmp_path):
  """A second --mode=eval of a step left the first one's predictions beside its metrics;
  a one-class label's AUROC was written as a bare NaN."""
  from radjax.train import writers
  out = tmp_path / 'eval' / '4'
  out.mkdir(parents=True)
  (out / 'predictions.jsonl').write_text('{"id": "old"}\n')
  (out / 'predictions_vqa.jsonl').write_text('{"id": "old"}\n')
  nan = types.SimpleNamespace(run=lambda *a: {'eval/auroc': float('nan'), 'eval/f1': 0.5})
  evaluators.run_all([nan], None, 4, out_dir=str(out))
  assert sorted(os.listdir(out)) == ['metrics.json']
  assert json.loads((out / 'metrics.json').read_text(), parse_constant=pytest.fail) == {
      'step': 4, 'eval/auroc': None, 'eval/f1': 0.5}
  w = writers.JsonlWriter(str(tmp_path / 'metrics.jsonl'), resume_step=0)
  w.write_scalars(4, {'eval/auroc': float('nan')})
  w.close()
  assert (tmp_path / 'metrics.jsonl').read_text() == '{"step": 4, "eval/auroc": null}\n'


def test_a_drawn_subset_is_the_same_from_version_to_version(dirs):
  """max_records/seed name a fixed subset (RadVLM's 2,000 Chest ImaGenome test images,
  seed 4): the draw itself is pinned, not only its determinism within one version."""
  assert eval_sets.subset(12, 5, 4).tolist() == [5, 8, 9, 10, 11]
  assert eval_sets.subset(50, 7, 0).tolist() == [2, 3, 12, 14, 23, 28, 37]
  assert eval_sets.subset(12, 0, 4) is None
  config = _config(dirs, loss=dict(max_records=5, seed=4))
  assert _ids(eval_sets.resolve(config, 'loss', 'val')) == [f'a-{i}' for i in (5, 8, 9, 10, 11)]


def test_a_component_is_read_with_its_kind_and_a_dir_with_config_data_tasks(dirs):
  """A volume component read by an evaluator is read as volumes; a dir outside the mixture
  with config.data.tasks, whatever the first component trains."""
  config = _config(dirs, reports=dict(component='v'), vqa=dict(dir=dirs['c']))
  config.data.mixture.v = dict(dir=dirs['c'], tasks=('report',), kind='volume')
  config.data.tasks = ('vqa', 'classification')
  assert eval_sets.resolve(config, 'reports', 'val').kind == 'volume'
  assert eval_sets.resolve(config, 'vqa', 'val').tasks == ('vqa', 'classification')
  assert eval_sets.resolve(config, 'loss', 'val').tasks == ('report',)  # the default: a's
