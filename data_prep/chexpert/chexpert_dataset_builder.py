"""CheXpert (Stanford): train.csv / valid.csv with 14 observations, JPEG images, and the
radiologist-labelled test set where it has been downloaded.

manual_dir: the folder that holds `CheXpert-v1.0-small/` (or the full-size
`CheXpert-v1.0/`), as the archive extracts. Labels: 1.0 positive, 0.0 negative, -1.0
uncertain, blank not mentioned (absent from `labels`). Splits: train.csv -> train,
valid.csv -> val, and the test labels -> test.

The test set (500 studies, 668 images of every view) was published later, inside the
CheXlocalize download (Stanford AIMI): its `CheXpert/` folder holds `test_labels.csv` and
the images `test/patientNNNNN/studyN/viewN_{frontal,lateral}.jpg`. Extract that folder
into manual_dir beside CheXpert-v1.0-small/; the CSV may instead sit beside train.csv as
`test_labels.csv` or `test.csv` (RadVLM's data folder) with `test/` next to it (TEST_FILES:
the first found). Without it there is no test split. Its columns are `Path` and the 14
observations, nothing else (no Sex, Age or view); each is 1 or 0, the majority vote of
five radiologists, never uncertain or blank, so every observation is in `labels` and any
other value (-1.0 too) rejects the row. `Path` is relative to the CSV's folder
(`test/patient64741/study1/view1_frontal.jpg`); a `CheXpert-v1.0[-small]/` prefix, as
train.csv's paths carry, is dropped first, and a path outside `test/` is rejected.

Views: config `default` keeps every view, `frontal` the frontal films only (RadVLM's
191,027 of train.csv's 223,414 images, and 518 of the test set's 668); the others are
left out, not rejected, and counted per split in the manifest's `filtered_by_view`. One
rule for every split, since the test labels have no view column: an image's view is its
file name's, `viewN_frontal.jpg` or `viewN_lateral.jpg` (RadVLM's CheXpert_Dataset_MM
keeps the `Path`s ending in `frontal.jpg`). Where the CSV has `Frontal/Lateral`
(train.csv, valid.csv) it must say the same or be blank; a mismatch, or a file name that
names no view, rejects the row in every config. `AP/PA` is not read: train.csv's 191,027
frontal films are the ones its `Frontal/Lateral` says, 17 of them marked LL or RL.

Sex, Age and view columns have no place in the Example schema. Example ids are the image
path below the dataset folder without its extension, e.g.
`train/patient00001/study1/view1_frontal` or `test/patient64741/study1/view1_frontal`; a
`Path` is normalised first (`train/../train/x.jpg` is `train/x.jpg`), and one that leaves
the dataset's folder is rejected.
"""

from __future__ import annotations

import posixpath

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

ROOTS = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + schema.CHEXPERT_OBSERVATIONS
SPLIT_FILES = {'train': 'train.csv', 'val': 'valid.csv'}
# Where the test labels may be ({dataset}: the folder holding train.csv); the first found.
TEST_FILES = ('CheXpert/test_labels.csv', '{dataset}/test_labels.csv', '{dataset}/test.csv')
TEST_COLUMNS = ('Path',) + schema.CHEXPERT_OBSERVATIONS
TEST_VALUES = {'1': 1, '1.0': 1, '0': 0, '0.0': 0}
VIEWS = {'frontal': 'Frontal', 'lateral': 'Lateral'}  # file name's view -> Frontal/Lateral


def parse_labels(row: dict, test: bool = False) -> dict:
  """The row's observations; the test set's (`test`) are all there, each 1 or 0."""
  labels = {}
  for obs in schema.CHEXPERT_OBSERVATIONS:
    value = test_label(row.get(obs), obs) if test else checks.chexpert_label(row.get(obs), obs)
    if value is not None:
      labels[obs] = value
  return labels


def test_label(value: str | None, column: str) -> int:
  value = (value or '').strip()
  if value not in TEST_VALUES:
    raise builder_lib.Reject(
      f'{column}: unknown label value {value!r} (the test labels are 1.0 or 0.0, the '
      "radiologists' majority vote: never uncertain or blank)")
  return TEST_VALUES[value]


def test_image(path: str) -> str:
  """A test CSV's Path below the CSV's own folder: a dataset-folder prefix dropped."""
  path = path.strip()
  for root in ROOTS:
    if path.startswith(root + '/'):
      path = path[len(root) + 1:]
      break
  return checks.relative_path(path, 'Path')[0]


def image_view(path: str) -> str | None:
  """'Frontal' or 'Lateral' from the file name (`view1_frontal.jpg`); None if it names none."""
  stem = posixpath.basename(path).rsplit('.', 1)[0]
  return VIEWS.get(stem.rsplit('_', 1)[-1]) if '_' in stem else None


def view_reject(path: str, column: str | None) -> str | None:
  """Why the row's view is in doubt: a file name naming none, or a `Frontal/Lateral`
  (`column`; None or blank where the CSV has none) saying otherwise."""
  view = image_view(path)
  if view is None:
    return (f'Path: {path!r} names no view (CheXpert images are viewN_frontal.jpg or '
            'viewN_lateral.jpg)')
  if (column or '').strip() not in ('', view):
    return f'Frontal/Lateral: {column!r}, but the file name {path!r} is {view.lower()}'
  return None


def find_test_csv(root: epath.Path, base: epath.Path) -> epath.Path | None:
  for rel in TEST_FILES:
    path = root / rel.format(dataset=base.name)
    if path.exists():
      return path
  return None


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """CheXpert chest radiographs with 14 CheXpert observations (no reports)."""

  name = 'chexpert'
  SOURCE = 'chexpert'
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
  REQUIRE_TEXT = False
  BUILDER_CONFIGS = builder_lib.view_configs(('Frontal',), 'viewN_frontal.jpg only')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download CheXpert-v1.0-small (or CheXpert-v1.0) after accepting the Stanford '
    'licence and extract it; pass the folder that holds CheXpert-v1.0-small/. For the '
    'test split, extract the CheXpert/ folder of the CheXlocalize download (Stanford '
    'AIMI: test_labels.csv and test/) into that same folder.')

  def split_items(self, root):
    base = checks.find_one(root, tuple(f'{r}/train.csv' for r in ROOTS), 'CheXpert').parent
    out = {}
    for split, name in SPLIT_FILES.items():
      path = base / name
      if not path.exists():
        if split == 'train':
          raise builder_lib.ManualDirError(f'{root}: expected {base.name}/{name}')
        continue
      rel = f'{base.name}/{name}'
      out[split] = []
      for line, row in checks.read_csv(path, COLUMNS, root):
        image, outside = checks.relative_path(row.get('Path'), 'Path')
        rid = image.split('/', 1)[1].rsplit('.', 1)[0] if '/' in image else image
        item = {'id': rid, 'file': rel, 'row': line, 'image': image, 'csv': row}
        if outside:
          item['reject'] = outside
        self.add_item(out[split], split, item, row.get('Frontal/Lateral'))
    test_csv = find_test_csv(root, base)
    if test_csv is not None:
      out['test'] = self.test_items(root, test_csv)
    return out

  def add_item(self, items: list[dict], split: str, item: dict, column: str | None) -> None:
    """Appends `item` unless the config leaves its view out; a reject (its own, or its
    view's: view_reject) is kept in every config."""
    reason = item.get('reject') or view_reject(item['image'], column)
    if reason:
      items.append(item | {'reject': reason})
    elif self.keeps_view(image_view(item['image']), split):
      items.append(item)

  def test_items(self, root: epath.Path, path: epath.Path) -> list[dict]:
    rel = str(path.relative_to(root))
    folder = str(path.parent.relative_to(root))  # every TEST_FILES entry has one
    items = []
    for line, row in checks.read_csv(path, TEST_COLUMNS, root):
      image = test_image(row.get('Path') or '')
      item = {'id': image.rsplit('.', 1)[0], 'file': rel, 'row': line,
              'image': f'{folder}/{image}', 'csv': row}
      if not image.startswith('test/'):
        item['reject'] = f"Path: {row.get('Path')!r} is not an image below test/"
      self.add_item(items, 'test', item, None)
    return items

  def make_example(self, item, split):
    labels = parse_labels(item['csv'], test=split == 'test')
    image, _ = checks.read_image(epath.Path(item['root']), item['image'], formats=('jpeg', 'png'))
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split,
                               images=[image], labels=labels)
