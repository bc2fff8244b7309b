"""3D boxes in the Example schema: 6 numbers on 3D images, 4 on 2D, named errors; the
grounding tasks serve 2D records as before and skip records with a volume."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from radjax.data import instructions, schema
from radjax.eval import __main__ as eval_cli

BOX_2D = [0.1, 0.2, 0.3, 0.4]
BOX_3D = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def _png() -> dict:
  buf = io.BytesIO()
  Image.fromarray(np.full((16, 16), 90, np.uint8)).save(buf, format='PNG')
  return {'data': buf.getvalue(), 'format': 'png', 'kind': '2d', 'spacing': None}


def _npy() -> dict:
  buf = io.BytesIO()
  np.save(buf, np.full((8, 8, 4), 0.5, np.float16), allow_pickle=False)
  return {'data': buf.getvalue(), 'format': 'npy', 'kind': '3d', 'spacing': [1.0, 1.0, 2.0]}


def _example(images, boxes, rid='rec-7', labels=None) -> dict:
  return schema.make_example(id=rid, source='t', split='train', images=images,
                             report={'findings': 'A nodule.', 'impression': ''},
                             labels=labels or {'Lung Lesion': 1},
                             boxes=[{'box': b, 'label': 'Lung Lesion', 'phrase': 'nodule'}
                                    for b in boxes])


def test_six_numbers_on_a_volume_and_four_on_a_radiograph_are_valid():
  schema.validate(_example([_npy()], [BOX_3D, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]))
  schema.validate(_example([_png()], [BOX_2D]))
  schema.validate(_example([_npy(), _npy()], [BOX_3D]))


@pytest.mark.parametrize('images, box, pattern', [
  ([_png()], BOX_3D, r"record 'rec-7': boxes\[0\]\.box: expected 4 numbers "
                     r'\[x1, y1, x2, y2\] \(2d image\)'),
  ([_npy()], BOX_2D, r"record 'rec-7': boxes\[0\]\.box: expected 6 numbers "
                     r'\[x1, y1, z1, x2, y2, z2\] \(3d image\)'),
  ([_npy()], [0.1, 0.2, 0.6, 0.4, 0.5, 0.6], r'z2<=z1'),
  ([_npy()], [0.1, 0.2, 0.3, 0.4, 0.5, 1.2], r'outside \[0, 1\]'),
  ([_png(), _npy()], BOX_3D, r"record 'rec-7': boxes: the record has both 2d and 3d images"),
  ([], BOX_3D, r'expected 4 numbers'),  # no image: boxes are 2D as before
])
def test_box_count_must_match_the_image_kind(images, box, pattern):
  with pytest.raises(schema.SchemaError, match=pattern):
    schema.validate(_example(images, [box]))


def test_mixed_kinds_without_boxes_are_fine():
  schema.validate(_example([_png(), _npy()], []))


def test_scoring_reference_boxes_stay_2d():
  # python -m radjax.eval score: grounding metrics are 2D, so a 3D reference box is a
  # clear error rather than a silent mis-score.
  assert eval_cli._check_references({'boxes': [{'label': 'x', 'box': BOX_3D}]}).startswith(
    'boxes[0]: box: expected 4 numbers')
  assert eval_cli._check_references({'boxes': [{'label': 'x', 'box': BOX_2D}]}) is None


@pytest.mark.parametrize('task', ['abnormality_grounding', 'phrase_grounding', 'detection',
                                  'anatomical_grounding'])
def test_grounding_tasks_serve_2d_records_and_skip_volumes(task):
  options = instructions.Options()
  fn = getattr(instructions, task)
  flat = _example([_png()], [BOX_2D])
  if task == 'anatomical_grounding':
    flat['boxes'][0]['label'] = 'right lung'
  turns = fn(flat, None, options)
  assert turns is not None and '[0.10, 0.20, 0.30, 0.40]' in turns[-1]['text']
  assert fn(_example([_npy()], [BOX_3D]), None, options) is None
  # A normal volume: no 2D "nothing to box" answer either.
  normal = _example([_npy()], [], labels={'No Finding': 1})
  assert fn(normal, None, options) is None


def test_other_tasks_still_serve_a_volume_with_boxes():
  volume = _example([_npy()], [BOX_3D])
  options = instructions.Options()
  assert instructions.classification(volume, None, options)[-1]['text']
  assert instructions.vqa(volume, None, options)[-1]['text'].startswith(('Yes', 'No'))
