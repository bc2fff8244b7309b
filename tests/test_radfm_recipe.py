"""configs/radfm.py at size=micro on the embedded default: synthetic CT volumes and 2D
X-rays in batches of their own, the keyword-weighted loss on, evaluation and generation
on held-out volumes (including a `.npy` given to --mode=generate)."""
import io
import json
import os
import subprocess
import sys

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


def test_two_processes_with_depth_buckets_log_the_losses_of_one(radfm_run, demo_data,
                                                                 tmp_path):
  """Depth buckets were refused on several processes (each would have padded its share of a
  volume batch to its own bucket). Now the model picks each slot's bucket from the whole
  batch in the program: two processes, their volume batches left full depth, log the
  losses of the one process whose host trimmed its batches (radfm_run), and its eval loss."""
  from tests import test_multiprocess as mp
  c, _, ct, rows = radfm_run
  assert c.data.depth_buckets and c.data.volume_batch_size == 8
  wd = _two_processes(tmp_path, ct, demo_data, STEPS, STEPS)
  want = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
  got = mp._losses(wd)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], atol=2e-4)
  want_eval = [r['eval/val_loss'] for r in rows if 'eval/val_loss' in r][-1]
  assert abs(mp._eval_loss(wd) - want_eval) < 2e-4


def _two_processes(tmp_path, ct: str, demo_data: str, steps: int, eval_every: int,
                   *flags: str) -> str:
  """The micro recipe trained by two processes (4 CPU devices each) -> its workdir."""
  from tests import test_multiprocess as mp
  os.makedirs(tmp_path, exist_ok=True)
  wd, port = str(tmp_path / 'wd'), mp._free_port()
  argv = [sys.executable, 'main.py', '--config', 'configs/radfm.py:size=micro', '--workdir',
          wd, f'--config.data.mixture.ct.dir={ct}', f'--config.data.mixture.cxr.dir={demo_data}',
          f'--config.data.keyword_terms={os.path.join(ct, "terms.txt")}',
          f'--config.train.num_steps={steps}', f'--config.train.checkpoint_every={steps}',
          f'--config.train.eval_every={eval_every}', '--config.train.async_checkpoint=False',
          '--config.optim.warmup_steps=2', "--config.eval.evaluators=('loss',)",
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          '--config.mesh.dcn.data=2', *flags]
  runs = []
  for i in range(2):
    out = open(str(tmp_path / f'process_{i}.out'), 'w+')
    runs.append((subprocess.Popen(argv + [f'--process_id={i}'], cwd=mp.ROOT, env=mp._env(4),
                                  stdout=out, stderr=subprocess.STDOUT, text=True), out))
  mp._finish(runs)
  return wd


def test_the_2d_components_train_as_2d_batches(radfm_run, demo_data):
  """The mixture's X-rays were processed by the eval dataset's slots, the CT volumes':
  each X-ray a volume of max_depth 48 (4 real slices) left untrimmed, so the 2D step ran
  the tower 48 deep, 12x its tokens, without RadFM's random resized crop, and not the
  step that batch_spec('image') (the dry run) describes. Now each kind's own slots."""
  from radjax.data import pipeline
  c, _, ct, _ = radfm_run
  task = run_lib.make_task(c)
  ds = pipeline.train_dataset(c, task.processor, c.data.train_split, 0, 1)
  spec = {k: f.shape for k, f in task.batch_spec('image').items()}
  kinds = set()
  for i in range(6):
    batch = ds[i]
    kind = 'image' if int(batch['source'][0]) == 1 else 'volume'  # cxr, ct
    kinds.add(kind)
    if kind == 'image':
      assert 'depth_mask' not in batch and 'volumes' not in batch
      assert {k: v.shape[1:] for k, v in batch.items() if k in spec} == spec
  assert kinds == {'image', 'volume'}


def test_full_recipe_uses_hf_trainer_adamw_defaults():
  """RadFM's train.py hands HF Trainer its defaults: AdamW betas (0.9, 0.999), eps 1e-8,
  no weight decay, gradients clipped at norm 1."""
  o = radfm.get_config('').optim
  assert (o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (0.9, 0.999, 1e-8, 0.0, 1.0)


def test_full_recipe_runs_a_batch_of_2d_images_at_depth_4_not_64():
  """RadFM's collator sizes each batch's depth to the batch (a 2D image: 4 slices); without
  depth buckets every batch ran the 3D tower at max_slices = 64, 16x the tokens."""
  import numpy as np

  from radjax.data import volumes
  c = radfm.get_config('data=radiopaedia')
  buckets, max_depth = tuple(c.data.depth_buckets), c.data.max_slices
  assert all(b % c.model.vision.depth_patch_size == 0 and b < max_depth for b in buckets)
  depth_mask = np.zeros((2, c.data.max_images, max_depth), bool)
  depth_mask[:, 0, :4] = True  # one image a row, one slice repeated to the depth patch
  batch = {'images': np.zeros((2, c.data.max_images, 1, 1, max_depth, 3), np.float32),
           'depth_mask': depth_mask}
  assert volumes.trim_depth(batch, buckets, max_depth)['images'].shape[-2] == 4
  depth_mask[1, 3, :40] = True  # a 40-slice scan in the batch: the 64 bucket
  assert volumes.trim_depth(batch, buckets, max_depth)['depth_mask'].shape[-1] == 64


def test_micro_trains_with_its_volume_batches_at_half_size(radfm_run, demo_data, tmp_path):
  """config.data.volume_image_size at half the micro tower's image_size (RadFM's 256 of
  512): the volume batches reach the step 16 x 16 in-plane (2 x 2 patches, the strided
  position rows), the 2D batches 32 x 32, and it trains; two processes, whose hosts leave
  the batches whole and whose step resizes them, log the same losses."""
  from radjax.data import pipeline
  _, _, ct, _ = radfm_run
  c = radfm.get_config('size=micro')
  c.data.mixture.ct.dir, c.data.mixture.cxr.dir = ct, demo_data
  c.data.keyword_terms = os.path.join(ct, 'terms.txt')
  c.data.volume_image_size = c.model.vision.image_size // 2
  steps = 6
  c.train.num_steps, c.train.checkpoint_every, c.train.eval_every = steps, steps, 0
  c.train.async_checkpoint, c.optim.warmup_steps = False, 2
  task = run_lib.make_task(c)
  ds = pipeline.train_dataset(c, task.processor, c.data.train_split, 0, 1)
  sizes = {('depth_mask' in ds[i], ds[i]['images'].shape[2]) for i in range(steps)}
  assert sizes == {(True, 16), (False, 32)}
  wd = str(tmp_path / 'wd')
  run_lib.main(c, wd, 'train')
  with open(os.path.join(wd, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if 'train/loss' in line]
  assert len(rows) == steps and all(np.isfinite(r['train/loss']) for r in rows)
  assert any(r['data/examples/ct'] > 0 for r in rows)
  from tests import test_multiprocess as mp
  got = mp._losses(_two_processes(tmp_path / 'two', ct, demo_data, steps, 0,
                                  f'--config.data.volume_image_size={c.data.volume_image_size}'))
  # 5e-7 apart here; a step that did not resize (32 x 32 volumes) drifts by 3e-5 to 5e-5
  # within these 6 steps of a random micro model.
  np.testing.assert_allclose([got[r['step']] for r in rows], [r['train/loss'] for r in rows],
                             atol=5e-6)
