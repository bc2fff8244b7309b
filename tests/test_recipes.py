"""The XrayGPT and RadVLM recipes at size=micro on the embedded default: RadVicuna ->
stage 1 -> stage 2 with frozen towers bit-identical and stage 2 starting from stage 1's
weights; RadVLM's multi-task mixture with every task's metrics; questions at
generation time and a scripted command-line chat."""
import json
import os

import jax
import numpy as np
import pytest

from configs import radvlm, xraygpt
from radjax import run as run_lib
from radjax.core import workdir as workdir_lib
from tests.conftest import build_experiment

STEPS = 12


def _micro(config, demo_data, steps=STEPS):
  c = config
  c.data.dir = demo_data
  c.data.builder_kwargs.num_train, c.data.builder_kwargs.num_val = 64, 16
  c.data.builder_kwargs.num_test = 16
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = steps, steps, steps
  c.train.async_checkpoint = False
  c.train.log_every = 1
  c.optim.warmup_steps = 2
  c.eval.batch_size, c.eval.num_generate, c.eval.max_new_tokens = 8, 8, 8
  for comp in c.data.mixture.values():
    comp.dir = demo_data
  return c


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _flat(params):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope='module')
def xraygpt_runs(demo_data, tmp_path_factory):
  root = tmp_path_factory.mktemp('xraygpt')
  wd = {k: str(root / k) for k in ('radvicuna', 'stage1', 'stage2')}
  lm = _micro(xraygpt.get_config('size=micro,task=lm'), demo_data)
  run_lib.main(lm, wd['radvicuna'], 'train')
  # The tests read weights and losses; report generation is RadVLM's test's and e2e's.
  s1 = _micro(xraygpt.get_config(f"size=micro,llm={wd['radvicuna']}"), demo_data)
  s1.eval.evaluators = ('loss',)
  run_lib.main(s1, wd['stage1'], 'train')
  s2 = _micro(xraygpt.get_config(f"size=micro,stage=2,stage1={wd['stage1']}"), demo_data)
  s2.eval.evaluators = ('loss',)
  run_lib.main(s2, wd['stage2'], 'train')
  return wd, s1, s2


def test_xraygpt_stage1_trains_only_the_linear_on_the_radvicuna_decoder(xraygpt_runs):
  wd, s1, _ = xraygpt_runs
  assert s1.data.chat_format == 'none' and s1.model.vision.variant == 'eva'
  assert s1.model.projector.kind == 'qformer'
  radvicuna = _flat(workdir_lib.load_params(wd['radvicuna']))
  stage1 = _flat(workdir_lib.load_params(wd['stage1']))
  for k, v in radvicuna.items():  # the frozen decoder is the RadVicuna one, untouched
    np.testing.assert_array_equal(stage1["['llm']" + k], v)
  losses = [r['train/loss'] for r in _rows(wd['stage1']) if 'train/loss' in r]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


def test_xraygpt_stage2_starts_from_stage1_and_keeps_frozen_parts(xraygpt_runs):
  wd, _, s2 = xraygpt_runs
  assert s2.data.chat_format == 'vicuna' and s2.data.tasks == ('report',)
  stage1 = _flat(workdir_lib.load_params(wd['stage1']))
  stage2 = _flat(workdir_lib.load_params(wd['stage2']))
  assert stage1.keys() == stage2.keys()
  trained = [k for k in stage1 if k.startswith("['projector']['out']")]
  assert trained
  for k in stage1:
    if k in trained:
      assert not np.array_equal(stage1[k], stage2[k]), k  # stage 2 trained the linear
    else:
      np.testing.assert_array_equal(stage1[k], stage2[k], err_msg=k)
  # It started where stage 1 ended: stage 2's initial state is stage 1's last params.
  exp = build_experiment(s2, pretrained=True)
  start = _flat(jax.device_get(exp.state.params))
  for k in stage1:
    np.testing.assert_array_equal(start[k], stage1[k], err_msg=k)


def test_xraygpt_answers_stop_at_stop_strings_inside_the_token_loop(xraygpt_runs, demo_data,
                                                                   tmp_path, monkeypatch):
  """Vicuna's '###' (and config.eval.stop_strings) end a row inside the token loop: the
  answers are those of decoding every new token and cutting the text after."""
  from radjax.eval.decoding import stop_strings
  from radjax.eval.evaluators import answers
  wd, _, s2 = xraygpt_runs
  config = s2.copy_and_resolve_references()
  config.eval.stop_strings = ('e', ' ')  # reached early in every answer
  image = os.path.join(str(tmp_path), 'x.png')
  _write_demo_image(demo_data, image)
  built, table = [], stop_strings.table
  monkeypatch.setattr(stop_strings, 'table', lambda *a: built.append(a[1]) or table(*a))
  in_loop = run_lib.main(config, wd['stage2'], 'generate', [image, image])
  assert built == [('###', 'e', ' ')]
  monkeypatch.setattr(answers.Answerer, '_stop_table', lambda self, gen_cfg: None)
  assert run_lib.main(config, wd['stage2'], 'generate', [image, image]) == in_loop


def test_radvlm_trains_the_mixture_and_scores_every_task(demo_data, tmp_path):
  config = _micro(radvlm.get_config('size=micro'), demo_data, steps=8)
  assert config.data.chat_format == 'chatml' and len(config.data.mixture) == 5
  workdir = str(tmp_path / 'radvlm')
  trained = run_lib.main(config, workdir, 'train')
  metrics = run_lib.main(config, workdir, 'eval')  # the same numbers, and predictions
  assert metrics == pytest.approx(trained)
  rows = _rows(workdir)
  assert any(r.get('data/examples/boxes') for r in rows)  # per-component counts logged
  for key in ('val_loss', 'finding_micro_f1', 'classification_micro_f1', 'grounding_mAP@0.5',
              'grounding_mean_iou', 'vqa_accuracy'):
    assert f'eval/{key}' in metrics, (key, sorted(metrics))
  out = os.path.join(workdir, 'eval', '8')
  for name in ('predictions.jsonl', 'predictions_classification.jsonl',
               'predictions_grounding.jsonl', 'predictions_vqa.jsonl'):
    with open(os.path.join(out, name)) as f:
      rows = [json.loads(line) for line in f]
    assert rows and all(r['reference'] for r in rows), name
  # A question at generation time, in the workdir's ChatML format.
  image = os.path.join(str(tmp_path), 'x.png')
  _write_demo_image(demo_data, image)
  question = 'Is there a pleural effusion?'
  answers = run_lib.main(config, workdir, 'generate', [image], question)
  assert len(answers) == 1 and isinstance(answers[0], str)
  # The export speaks the same ChatML (system prompt included): transformers answers alike.
  from radjax.convert import __main__ as convert_cli
  from tests.test_export_vlm import hf_report
  hf_dir = str(tmp_path / 'hf')
  assert convert_cli.main(['to-hf', '--workdir', workdir, '--out', hf_dir]) == 0
  assert hf_report(hf_dir, image, question, config.eval.max_new_tokens)[0] == answers[0]
  said = []
  script = iter(['Is the heart enlarged?', 'And the lungs?', ''])
  turns = run_lib.chat_loop(config, workdir, [image], read=lambda _: next(script),
                            write=said.append)
  assert [t['role'] for t in turns] == ['user', 'assistant'] * 2
  assert sum(s.startswith('model> ') for s in said) == 2


def _write_demo_image(demo_data, path):
  from radjax.data import schema, source
  example = schema.decode(source.open_split(demo_data, 'test')[0])
  with open(path, 'wb') as f:
    f.write(example['images'][0]['data'])
