"""The synthetic chest CT renderer and its report / conversation composers: determinism,
each finding changing exactly the voxels its ground truth says, and text the report
labeler reads back as the labels."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from data_prep import ct_conversation_composer, ct_renderer, ct_report_composer
from radjax.eval.metrics import labeler


def _case(seed: int, findings, **kwargs) -> ct_renderer.Case:
  return ct_renderer.sample_case(np.random.default_rng(seed), findings, **kwargs)


def _box_voxels(box, shape) -> tuple[slice, ...]:
  """Voxel index ranges a [x1, y1, z1, x2, y2, z2] box covers (columns, rows, slices)."""
  rows, cols, slices = shape
  x1, y1, z1, x2, y2, z2 = box
  span = lambda a, b, n: slice(int(np.floor(a * n)), int(np.ceil(b * n)))
  return span(y1, y2, rows), span(x1, x2, cols), span(z1, z2, slices)


def test_render_is_deterministic_and_fast():
  a = _case(7, {'nodule', 'pleural_effusion', 'cardiomegaly'}, slices=48)
  b = _case(7, {'nodule', 'pleural_effusion', 'cardiomegaly'}, slices=48)
  assert a == b
  start = time.perf_counter()
  va = ct_renderer.render(a)
  seconds = time.perf_counter() - start
  assert np.array_equal(va, ct_renderer.render(b))
  assert va.shape == (64, 64, 48) and va.dtype == np.float32
  assert 0.0 <= va.min() and va.max() <= 1.0
  assert seconds < 1.0, f'one 64x64x48 volume took {seconds:.2f} s'
  assert not np.array_equal(va, ct_renderer.render(_case(8, {'nodule'}, slices=48)))


def test_slices_drawn_in_range_and_anatomy_present():
  depths = {_case(s, ()).shape[2] for s in range(40)}
  assert min(depths) >= ct_renderer.SLICE_RANGE[0] and max(depths) <= ct_renderer.SLICE_RANGE[1]
  assert len(depths) > 10  # variable depth: padding/bucketing gets exercised
  case = _case(0, (), slices=32)
  hu = ct_renderer.render_hu(case)
  assert hu[0, 0, 0] == ct_renderer.HU['air']  # outside the body
  mid = hu[:, :, 16]
  lung = np.abs(mid - ct_renderer.HU['lung']) < 60
  right, left = lung[:, :32].sum(), lung[:, 32:].sum()
  assert right > 100 and left > 100  # two lungs, one each side
  assert (np.abs(hu - ct_renderer.HU['bone']) < 60).sum() > 50  # spine and ribs
  # Airway air inside the body at the top of the chest.
  top = hu[:, :, -3]
  assert (top[10:40, 24:40] < -900).any()


@pytest.mark.parametrize('seed', range(6))
def test_nodule_changes_voxels_only_inside_its_box(seed):
  case = _case(seed, {'nodule', 'pleural_effusion'}, slices=24 + seed * 4)
  without = dataclasses.replace(case, nodules=())
  diff = ct_renderer.render_hu(case) != ct_renderer.render_hu(without)
  inside = np.zeros_like(diff)
  for n in case.nodules:
    box = ct_renderer.nodule_box(case, n)
    assert len(box) == 6 and box[0] < box[3] and box[1] < box[4] and box[2] < box[5]
    region = _box_voxels(box, case.shape)
    assert diff[region].any(), 'a nodule box with no changed voxel in it'
    inside[region] = True
    # The lesion sits in lung: its centre voxel is aerated lung without it.
    assert ct_renderer.render_hu(without)[n.centre] < -700
  assert diff.any() and not (diff & ~inside).any()


@pytest.mark.parametrize('seed', range(4))
def test_effusion_fills_the_dependent_pleural_space_of_its_side(seed):
  case = _case(seed, {'pleural_effusion'}, slices=32)
  without = dataclasses.replace(case, effusion=())
  hu = ct_renderer.render_hu(case)
  diff = hu != ct_renderer.render_hu(without)
  rows, cols, _ = np.nonzero(diff)
  assert len(rows) > 20
  sides = dict(case.effusion)
  if set(sides) == {'right'}:
    assert cols.max() < 32  # the patient's right is the image left
  elif set(sides) == {'left'}:
    assert cols.min() >= 32
  else:
    assert cols.min() < 32 <= cols.max()
  assert rows.mean() > 32  # posterior: it layers where a supine patient's fluid goes
  assert np.all(np.abs(hu[diff] - ct_renderer.HU['fluid']) < 100)


def test_cardiomegaly_enlarges_the_heart_within_its_box():
  small = _case(3, (), slices=32)
  large = _case(3, {'cardiomegaly'}, slices=32)
  assert large.heart[3] > small.heart[3]
  # The same anatomy with a normal heart: the enlarged one displaces lung, and every
  # change lies within its box.
  same = dataclasses.replace(large, cardiomegaly=False, heart=small.heart)
  hu_same, hu_large = ct_renderer.render_hu(same), ct_renderer.render_hu(large)
  lung = lambda hu: (hu < -700).sum()
  assert lung(hu_large) < lung(hu_same) - 500
  diff = hu_same != hu_large
  outside = np.ones_like(diff)
  outside[_box_voxels(ct_renderer.heart_box(large), large.shape)] = False
  assert diff.any() and not (diff & outside).any()


def test_unknown_finding_and_window_are_errors():
  with pytest.raises(ValueError, match='unknown findings'):
    _case(0, {'pneumothorax'})
  with pytest.raises(ValueError, match='unknown window'):
    ct_renderer.render(_case(0, ()), 'abdomen')


def test_reports_read_back_as_their_labels_and_conversations_are_true():
  for seed in range(120):
    rng = np.random.default_rng(seed)
    findings = {f for f in ct_renderer.FINDINGS if rng.random() < 0.4}
    meta = ct_renderer.meta(ct_renderer.sample_case(rng, findings, slices=20))
    report, labels = ct_report_composer.compose(rng, meta)
    read = labeler.label_report(labeler.report_text(report['findings'], report['impression']))
    assert {k for k, v in read.items() if v == 1} == {k for k, v in labels.items() if v == 1}, (
      report)
    for n in meta['nodules']:
      assert f"{round(n['diameter_mm'])} mm {n['phrase']} in the {n['side']} {n['lobe']} lobe" in (
        report['findings'])
    turns = ct_conversation_composer.compose(rng, meta)
    assert 4 <= len(turns) <= 6
    for question, answer in zip(turns[::2], turns[1::2]):
      topic = next(t for t, qs in ct_conversation_composer.QUESTIONS.items()
                   if question['text'] in qs)
      truth = (not findings) if topic == 'overall' else topic in findings
      assert answer['text'].startswith('Yes' if truth else 'No'), (question, answer)
    present = [t for t in ct_renderer.FINDINGS if t in findings]
    asked = {t for t, qs in ct_conversation_composer.QUESTIONS.items()
             for q in turns[::2] if q['text'] in qs}
    assert not present or asked & set(present)


def test_article_before_millimetres():
  assert [ct_report_composer.article(n) for n in (8, 11, 18, 12, 80, 21)] == [
    'an', 'an', 'an', 'a', 'an', 'a']
