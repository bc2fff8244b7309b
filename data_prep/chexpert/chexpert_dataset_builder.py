"""CheXpert (Stanford): train.csv / valid.csv with 14 observations, JPEG images.

manual_dir: the folder that holds `CheXpert-v1.0-small/` (or the full-size
`CheXpert-v1.0/`), as the archive extracts. Labels: 1.0 positive, 0.0 negative, -1.0
uncertain, blank not mentioned (absent from `labels`). Splits: train.csv -> train,
valid.csv -> val. Sex, Age and view columns have no place in the Example schema.
Example ids are the image path below the dataset folder without its extension, e.g.
`train/patient00001/study1/view1_frontal`.
"""

from __future__ import annotations

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

ROOTS = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + schema.CHEXPERT_OBSERVATIONS
SPLIT_FILES = {'train': 'train.csv', 'val': 'valid.csv'}


def parse_labels(row: dict) -> dict:
  labels = {}
  for obs in schema.CHEXPERT_OBSERVATIONS:
    value = checks.chexpert_label(row.get(obs), obs)
    if value is not None:
      labels[obs] = value
  return labels


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """CheXpert chest radiographs with 14 CheXpert observations (no reports)."""

  name = 'chexpert'
  SOURCE = 'chexpert'
  HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
  REQUIRE_TEXT = False
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download CheXpert-v1.0-small (or CheXpert-v1.0) after accepting the Stanford '
    'licence and extract it; pass the folder that holds CheXpert-v1.0-small/.')

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
        image = (row.get('Path') or '').strip()
        rid = image.split('/', 1)[1].rsplit('.', 1)[0] if '/' in image else image
        out[split].append({'id': rid, 'file': rel, 'row': line, 'image': image, 'csv': row})
    return out

  def make_example(self, item, split):
    labels = parse_labels(item['csv'])
    image, _ = checks.read_image(epath.Path(item['root']), item['image'], formats=('jpeg', 'png'))
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split,
                               images=[image], labels=labels)
