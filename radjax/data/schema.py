"""The one Example schema shared by every dataset and every task.

A record is a plain dict serialised with msgpack (never pickle), so shards can be
read by any language and a corrupt or hostile file cannot execute code. Converters
fill what their dataset has; task templates in radjax/data turn an Example into a
prompt and a target.

    id            str, non-empty, unique within a dataset
    source        str, dataset name ("demo", "mimic-cxr", ...)
    split         "train" | "val" | "test"
    images        [{"data": bytes, "format": "png"|"jpeg"|"npy",
                    "kind": "2d"|"3d", "spacing": [float, ...] | None}]
    report        {"findings": str, "impression": str}
    labels        {CheXpert observation: 1 | 0 | -1}   (absent = not mentioned)
    boxes         [{"box": [x1, y1, x2, y2] in [0, 1], "label": str, "phrase": str}]
                  on 3d images 6 numbers [x1, y1, z1, x2, y2, z2]: z along the slices
                  (the last axis of a (rows, cols, slices) volume), x along columns,
                  y along rows, each a fraction of the extent
    conversation  [{"role": "user"|"assistant"|"system", "text": str}]
    codes         [int] | None   (precomputed VQ-GAN token ids)
    schema_version int
"""

from __future__ import annotations

import io
from typing import Any

import msgpack
import numpy as np
from PIL import Image, UnidentifiedImageError

SCHEMA_VERSION = 1

SPLITS = ('train', 'val', 'test')
IMAGE_FORMATS = ('png', 'jpeg', 'npy')
IMAGE_KINDS = ('2d', '3d')
ROLES = ('user', 'assistant', 'system')
LABEL_VALUES = (1, 0, -1)

CHEXPERT_OBSERVATIONS = (
  'No Finding',
  'Enlarged Cardiomediastinum',
  'Cardiomegaly',
  'Lung Opacity',
  'Lung Lesion',
  'Edema',
  'Consolidation',
  'Pneumonia',
  'Atelectasis',
  'Pneumothorax',
  'Pleural Effusion',
  'Pleural Other',
  'Fracture',
  'Support Devices',
)

# The embedded default's rendered findings and the CheXpert observation each one is
# (data_prep/report_composer.py writes them; the report evaluator scores them).
DEMO_FINDINGS = {
  'cardiomegaly': 'Cardiomegaly',
  'pleural_effusion': 'Pleural Effusion',
  'pneumothorax': 'Pneumothorax',
  'nodule': 'Lung Lesion',
  'consolidation': 'Consolidation',
}

# Top-level keys and the Python types a decoded record must have.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
  'schema_version': (int,),
  'id': (str,),
  'source': (str,),
  'split': (str,),
  'images': (list,),
  'report': (dict,),
  'labels': (dict,),
  'boxes': (list,),
  'conversation': (list,),
  'codes': (list, type(None)),
}


class SchemaError(ValueError):
  """A record that does not follow the Example schema."""


class Unusable(SchemaError):
  """A valid record this run cannot use: stepped over and counted under `reason`."""
  reason = 'unusable'


class TooLong(Unusable):
  """A record whose tokens do not fit config.data.max_len (dropped and counted when
  config.data.too_long='drop')."""
  reason = 'too_long'

  def __init__(self, message: str, truncate_helps: bool = True):
    super().__init__(message)
    self.truncate_helps = truncate_helps  # False: truncating the answer cannot make it fit


class NoTask(Unusable):
  """A record that serves none of its dataset's instruction tasks (a grounding task on a
  record without boxes)."""
  reason = 'no_task'


def make_example(**fields: Any) -> dict:
  """Returns a complete Example: given fields over empty defaults.

  Unknown field names are an error, so a typo in a converter fails loudly
  instead of writing a field no reader looks at.
  """
  unknown = set(fields) - set(_FIELD_TYPES)
  if unknown:
    raise SchemaError(f"record {fields.get('id')!r}: unknown fields {sorted(unknown)}")
  example = {
    'schema_version': SCHEMA_VERSION,
    'id': '',
    'source': '',
    'split': 'train',
    'images': [],
    'report': {'findings': '', 'impression': ''},
    'labels': {},
    'boxes': [],
    'conversation': [],
    'codes': None,
  }
  example.update(fields)
  report = dict(example['report'] or {})
  example['report'] = {
    'findings': report.get('findings') or '',
    'impression': report.get('impression') or '',
  }
  return example


def encode(example: dict) -> bytes:
  """Serialises an Example to msgpack bytes (bytes stay bytes: use_bin_type)."""
  return msgpack.packb(example, use_bin_type=True)


def decode(raw: bytes) -> dict:
  """Parses msgpack bytes into an Example, checking version, keys and types.

  Only the cheap structural checks run here (this is on the input pipeline's
  hot path); `validate` does the deep checks at write time.
  """
  try:
    example = msgpack.unpackb(raw, raw=False)
  except Exception as e:  # msgpack raises several unrelated types.
    raise SchemaError(f'record <unparseable>: msgpack: {e}') from e
  if not isinstance(example, dict):
    raise SchemaError(f'record <unknown>: top level is {type(example).__name__}, not a map')
  rid = example.get('id', '<unknown>')
  version = example.get('schema_version')
  if version != SCHEMA_VERSION:
    raise SchemaError(
      f'record {rid!r}: schema_version: got {version!r}, this code reads {SCHEMA_VERSION}'
    )
  _check_structure(example, rid)
  _check_elements(example, rid)
  return example


def _check_structure(example: dict, rid: Any) -> None:
  for key, types in _FIELD_TYPES.items():
    if key not in example:
      raise SchemaError(f'record {rid!r}: {key}: missing')
    if not isinstance(example[key], types) or isinstance(example[key], bool):
      raise SchemaError(
        f"record {rid!r}: {key}: expected {'/'.join(t.__name__ for t in types)}, "
        f"got {type(example[key]).__name__}"
      )


def _fail(rid: Any, field: str, reason: str) -> SchemaError:
  return SchemaError(f'record {rid!r}: {field}: {reason}')


def _check_elements(example: dict, rid: Any) -> None:
  """The cheap checks of each image entry, report section, label and turn (no decoding):
  `decode` runs them too, so a record written without `validate` fails naming its field,
  not with a KeyError deep in the pipeline."""
  for i, image in enumerate(example['images']):
    _check_image_entry(rid, i, image)
  report = example['report']
  for key in ('findings', 'impression'):
    if not isinstance(report.get(key), str):
      raise _fail(rid, f'report.{key}', 'missing or not a string')
  for name, value in example['labels'].items():
    if name not in CHEXPERT_OBSERVATIONS:
      raise _fail(rid, f'labels[{name!r}]', 'unknown CheXpert observation')
    if isinstance(value, bool) or value not in LABEL_VALUES:
      raise _fail(rid, f'labels[{name!r}]', f'value {value!r} not in {LABEL_VALUES}')
  for i, box in enumerate(example['boxes']):
    if not isinstance(box, dict):
      raise _fail(rid, f'boxes[{i}]', 'not a map')
  for i, turn in enumerate(example['conversation']):
    if not isinstance(turn, dict):
      raise _fail(rid, f'conversation[{i}]', 'not a map')
    if turn.get('role') not in ROLES:
      raise _fail(rid, f'conversation[{i}].role', f"{turn.get('role')!r} not in {ROLES}")
    if not isinstance(turn.get('text'), str):
      raise _fail(rid, f'conversation[{i}].text', 'missing or not a string')


def _check_image_entry(rid: Any, i: int, image: Any) -> None:
  field = f'images[{i}]'
  if not isinstance(image, dict):
    raise _fail(rid, field, 'not a map')
  data, fmt, kind = image.get('data'), image.get('format'), image.get('kind')
  if not isinstance(data, bytes) or not data:
    raise _fail(rid, f'{field}.data', 'missing or not bytes')
  if fmt not in IMAGE_FORMATS:
    raise _fail(rid, f'{field}.format', f'{fmt!r} not in {IMAGE_FORMATS}')
  if kind not in IMAGE_KINDS:
    raise _fail(rid, f'{field}.kind', f'{kind!r} not in {IMAGE_KINDS}')


def _check_image(rid: Any, i: int, image: Any) -> None:
  field = f'images[{i}]'
  data, fmt, kind = image['data'], image['format'], image['kind']
  spacing = image.get('spacing')
  if spacing is not None and not (
    isinstance(spacing, list) and all(isinstance(s, (int, float)) for s in spacing)
  ):
    raise _fail(rid, f'{field}.spacing', 'must be a list of numbers or None')
  # Actually decode: a truncated PNG passes every header check and then kills a
  # training run hours later inside a Grain worker.
  try:
    if fmt == 'npy':
      array = np.load(io.BytesIO(data), allow_pickle=False)
      ndim = array.ndim
    else:
      with Image.open(io.BytesIO(data)) as im:
        if im.format is None or im.format.lower() != fmt:
          raise ValueError(f'bytes are {im.format}, declared {fmt}')
        im.load()
        ndim = 2
  except Exception as e:
    raise _fail(rid, f'{field}.data', f'does not decode as {fmt}: {decode_error(e)}') from e
  if kind == '3d' and ndim < 3:
    raise _fail(rid, f'{field}.kind', f'declared 3d but array has {ndim} dims')


def decode_error(e: Exception) -> str:
  """PIL's error for undecodable bytes, minus the in-memory file's address that
  UnidentifiedImageError names (messages, and rejects.jsonl, stay the same run to run)."""
  if isinstance(e, UnidentifiedImageError):
    return 'cannot identify the image file (not a PNG or JPEG)'
  return str(e) or type(e).__name__


# Box coordinates per image kind: a corner's coordinates, then the opposite corner's.
BOX_AXES = {'2d': ('x', 'y'), '3d': ('x', 'y', 'z')}


def box_error(box: Any, none_text: bool = False, kind: str = '2d') -> str | None:
  """Why `box` is not `{"box": [x1, y1, x2, y2] in [0, 1], "label": str, "phrase": str}`
  (x1 < x2, y1 < y2; on a `kind` '3d' image [x1, y1, z1, x2, y2, z2], z1 < z2 too), or
  None. The one box rule: records (validate) and reference boxes of scored predictions
  (python -m radjax.eval score) both use it."""
  if not isinstance(box, dict):
    return 'not a map'
  axes = BOX_AXES[kind]
  names = '[' + ', '.join([f'{a}1' for a in axes] + [f'{a}2' for a in axes]) + ']'
  coords = box.get('box')
  if not (
    isinstance(coords, list)
    and len(coords) == 2 * len(axes)
    and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)
  ):
    return f'box: expected {2 * len(axes)} numbers {names} ({kind} image), got {coords!r}'
  if not all(0.0 <= c <= 1.0 for c in coords):
    return f'box: {coords} outside [0, 1]'
  low, high = coords[:len(axes)], coords[len(axes):]
  if any(b <= a for a, b in zip(low, high)):
    return f"box: {coords} has {' or '.join(f'{a}2<={a}1' for a in axes)}"
  for key in ('label', 'phrase'):
    value = box.get(key, '')
    if not (isinstance(value, str) or (none_text and value is None)):
      return f'{key}: not a string'
  return None


def boxes_kind(example: dict) -> str:
  """The image kind a record's boxes are on: its images' one kind ('2d' without images).
  A record with both kinds cannot say which image a box is on, so it may carry none."""
  kinds = {image.get('kind') for image in example['images'] if isinstance(image, dict)}
  if len(kinds) > 1:
    raise _fail(example.get('id', '<unknown>'), 'boxes',
                'the record has both 2d and 3d images: which one a box is on is ambiguous')
  return kinds.pop() if kinds else '2d'


def _check_box(rid: Any, i: int, box: Any, kind: str) -> None:
  reason = box_error(box, kind=kind)
  if reason is not None:
    key, sep, why = reason.partition(': ')
    raise _fail(rid, f'boxes[{i}].{key}' if sep else f'boxes[{i}]', why if sep else reason)


def validate(example: dict, *, require_text: bool = True) -> None:
  """Raises SchemaError("record 'id': field: reason") unless `example` is valid.

  Every converter calls this (through data_prep.writer) before writing, so bad
  records are rejected with a reason rather than silently dropped or written.
  `require_text=False` is for label- or box-only datasets (e.g. CheXpert
  labels, VinDr boxes) whose examples legitimately carry no report.
  """
  if not isinstance(example, dict):
    raise SchemaError(f'record <unknown>: not a dict but {type(example).__name__}')
  rid = example.get('id', '<unknown>')
  if example.get('schema_version') != SCHEMA_VERSION:
    raise _fail(rid, 'schema_version', f"{example.get('schema_version')!r} != {SCHEMA_VERSION}")
  _check_structure(example, rid)
  _check_elements(example, rid)
  if not example['id']:
    raise _fail(rid, 'id', 'empty')
  if example['split'] not in SPLITS:
    raise _fail(rid, 'split', f"{example['split']!r} not in {SPLITS}")

  for i, image in enumerate(example['images']):
    _check_image(rid, i, image)

  report = example['report']
  extra = set(report) - {'findings', 'impression'}
  if extra:
    raise _fail(rid, 'report', f'unknown sections {sorted(extra)}')

  if example['boxes']:
    kind = boxes_kind(example)
    for i, box in enumerate(example['boxes']):
      _check_box(rid, i, box, kind)

  codes = example['codes']
  if codes is not None and not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
    raise _fail(rid, 'codes', 'must be a list of ints or None')

  # An example must teach something: a report, or a conversation to answer.
  no_report = not report['findings'].strip() and not report['impression'].strip()
  if require_text and no_report and not example['conversation']:
    raise _fail(rid, 'report', 'findings and impression both empty and no conversation')
