"""MS-CXR phrase grounding (PhysioNet): radiologist boxes for report phrases on MIMIC-CXR.

manual_dir: the MS-CXR folder with `MS_CXR_Local_Alignment_v1.1.0.csv` (or v1.0.0),
columns `dicom_id, category_name, label_text, path, x, y, w, h, image_width,
image_height` (and `split` from v1.1.0), plus the MIMIC-CXR-JPG `files/` tree the
`path` column points into (copy or symlink it there).

One Example per image: all its boxes ([x, y, w, h] in pixels -> [x1, y1, x2, y2]
normalised by the CSV's image_width / image_height, checked against the JPEG's own
size), `label` = category_name (a CheXpert observation), `phrase` = label_text; the
labels of its categories are 1. Splits: where the folder also holds MIMIC-CXR-JPG's
`mimic-cxr-2.0.0-split.csv(.gz)`, MIMIC-CXR's own per dicom_id (train, validate -> val,
test), as RadVLM splits MS-CXR (a subset of MIMIC-CXR: 971 train + validate, 189 test
with v1.0.0); else the CSV's `split` column (v1.1.0: train / val / test); else test (v1.0.0
alone). An image whose rows name two splits is a reject.
"""

from __future__ import annotations

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

FILES = ('MS_CXR_Local_Alignment_v1.1.0.csv', 'MS_CXR_Local_Alignment_v1.0.0.csv')
COLUMNS = ('dicom_id', 'category_name', 'label_text', 'path', 'x', 'y', 'w', 'h',
           'image_width', 'image_height')
SPLITS = {'train': 'train', 'val': 'val', 'validation': 'val', 'valid': 'val', 'validate': 'val',
          'test': 'test'}


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """MS-CXR phrase grounding boxes on MIMIC-CXR images."""

  name = 'ms_cxr'
  SOURCE = 'ms-cxr'
  HOMEPAGE = 'https://physionet.org/content/ms-cxr/'
  REQUIRE_TEXT = False
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download MS-CXR from PhysioNet (credentialed), put (or symlink) MIMIC-CXR-JPG's "
    'files/ folder into it, and pass that folder.')

  def split_items(self, root):
    path = checks.find_one(root, FILES, 'MS-CXR')
    mimic = _mimic_splits(root)
    by_image: dict[str, dict] = {}
    for line, row in checks.read_csv(path, COLUMNS, root):
      key = row['dicom_id'].strip()
      named = mimic.get(key, '') if mimic else row.get('split') or 'test'
      split = SPLITS.get(named.strip().lower())
      item = by_image.setdefault(key, {'id': key, 'file': path.name, 'row': line,
                                       'image': row['path'].strip(), 'rows': [],
                                       'split': split or 'test'})
      if mimic and not named:
        item['reject'] = f'row {line}: dicom_id {key} is not in mimic-cxr-2.0.0-split.csv'
      elif split is None:
        item['reject'] = f'row {line}: split: unknown value {named!r}'
      elif split != item['split']:
        item['reject'] = f"row {line}: split {named!r}, where row {item['row']} said otherwise"
      item['rows'].append((line, row))
    out: dict[str, list] = {}
    for item in by_image.values():
      out.setdefault(item.pop('split'), []).append(item)
    return out

  def make_example(self, item, split):
    image, size = checks.read_image(epath.Path(item['root']), item['image'], formats=('jpeg',))
    boxes, labels = [], {}
    for line, row in item['rows']:
      where = f"{item['file']} row {line}"
      category = row['category_name'].strip()
      if category not in schema.CHEXPERT_OBSERVATIONS:
        raise builder_lib.Reject(f'{where}: category_name {category!r} is not an observation')
      w0, h0 = (checks.number(row[c], f'{where} {c}') for c in ('image_width', 'image_height'))
      if (round(w0), round(h0)) != size:
        raise builder_lib.Reject(f'{where}: image_width/height {w0:g}x{h0:g} but the JPEG is '
                                 f'{size[0]}x{size[1]}')
      x, y, w, h = (checks.number(row[c], f'{where} {c}') for c in 'xywh')
      box = checks.pixel_box(x, y, x + w, y + h, size, where)
      boxes.append({'box': box, 'label': category, 'phrase': ' '.join(row['label_text'].split())})
      labels[category] = 1
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               boxes=boxes, labels=labels)


def _mimic_splits(root) -> dict[str, str]:
  """{dicom_id: MIMIC-CXR split} from mimic-cxr-2.0.0-split.csv(.gz) in the folder, or {}."""
  names = ('mimic-cxr-2.0.0-split.csv.gz', 'mimic-cxr-2.0.0-split.csv')
  if not any((root / n).exists() for n in names):
    return {}
  path = checks.find_one(root, names, 'MIMIC-CXR-JPG')
  splits = {}
  for _, row in checks.read_csv(path, ('dicom_id', 'split'), root):
    splits[row['dicom_id'].strip()] = row['split'].strip()
  return splits
