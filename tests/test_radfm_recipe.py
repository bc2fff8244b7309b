"""configs/radfm.py at size=micro on the embedded default: synthetic CT volumes and 2D
X-rays in batches of their own, the keyword-weighted loss on, evaluation and generation
on held-out volumes (including a `.npy` given to --mode=generate)."""
import io
import json
import os

import numpy as np
import pytest

from configs import radfm
from radjax import run as run_lib
from radjax.data import schema, source

STEPS = 16


@pytest.fixture(scope='module')
def radfm_run(demo_data, tmp_path_factory):
  from data_prep import demo_ct
  root = tmp_path_factory.mktemp('radfm')
  ct = str(root / 'ct')
  demo_ct.build(ct, num_train=32, num_val=8, num_test=8)
  c = radfm.get_config('size=micro')
  c.data.mixture.ct.dir, c.data.mixture.cxr.dir = ct, demo_data
  c.data.keyword_terms = os.path.join(ct, 'terms.txt')
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = STEPS, STEPS, STEPS
  c.train.async_checkpoint = False
  c.optim.warmup_steps = 2
  wd = str(root / 'wd')
  run_lib.main(c, wd, 'train')
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return c, wd, ct, rows


def test_micro_trains_on_both_kinds_apart(radfm_run):
  c, _, _, rows = radfm_run
  assert c.model.vision.kind == 'vit3d' and c.model.projector.kind == 'perceiver'
  assert c.data.image_delimiters and c.data.chat_format == 'plain'
  steps = [r for r in rows if 'train/loss' in r]
  kinds = [(r['data/examples/ct'] > 0, r['data/examples/cxr'] > 0) for r in steps]
  assert all(a != b for a, b in kinds)  # never both in one batch
  assert {a for a, _ in kinds} == {True, False}  # and both kinds trained
  losses = [r['train/loss'] for r in steps]
  assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses


def test_held_out_volumes_are_evaluated_and_answered(radfm_run, tmp_path):
  c, wd, ct, rows = radfm_run
  final = [r for r in rows if 'eval/val_loss' in r][-1]
  assert np.isfinite(final['eval/val_loss'])
  assert final['eval/finding_num_examples'] == c.eval.num_generate
  # A held-out volume as the .npy --mode=generate reads.
  ex = schema.decode(source.open_split(ct, 'test')[0])
  vol = np.load(io.BytesIO(ex['images'][0]['data']))
  path = str(tmp_path / 'scan.npy')
  np.save(path, vol)
  texts = run_lib.generate(c, wd, [path], 'Is there a pleural effusion?')
  assert len(texts) == 1 and isinstance(texts[0], str)
