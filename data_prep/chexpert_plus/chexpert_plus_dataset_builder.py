"""CheXpert-Plus: CheXpert images with their report sections (Stanford AIMI).

manual_dir: the folder with `df_chexpert_plus_240401.csv` (columns include
`path_to_image`, `split`, `frontal_lateral`, `section_findings`, `section_impression`),
the images under `PNG/` (`path_to_image` with .png; the .jpg of CheXpert at the same
relative path works too) and, optionally, `chexbert_labels/report_fixed.json` (one JSON
object per line: `path_to_image` and CheXbert's 14 observations, 1 / 0 / -1 / null).

One Example per image: findings = `section_findings`, impression =
`section_impression` (plus `section_end_of_impression` where present). Splits: train,
valid -> val. Config `frontal` keeps `frontal_lateral == Frontal` rows only (the rest
counted in the manifest as filtered). Id: `path_to_image`, normalised, without its
extension; a path that leaves the folder is rejected.
"""

from __future__ import annotations

import json

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

CSV = 'df_chexpert_plus_240401.csv'
LABELS = 'chexbert_labels/report_fixed.json'
COLUMNS = ('path_to_image', 'split', 'frontal_lateral', 'section_findings', 'section_impression')
SPLITS = {'train': 'train', 'valid': 'val', 'test': 'test'}


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """CheXpert-Plus radiographs with findings and impression sections."""

  name = 'chexpert_plus'
  SOURCE = 'chexpert-plus'
  HOMEPAGE = 'https://stanfordaimi.azurewebsites.net/datasets/5158c524-d3ab-4e02-96e9-6ee9efc110a1'
  REQUIRED_FILES = (CSV,)
  BUILDER_CONFIGS = builder_lib.view_configs(('Frontal',), 'frontal only')  # frontal_lateral
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f'Download CheXpert-Plus ({CSV}, the PNG images, optionally chexbert_labels/) and '
    'pass the folder that holds them.')

  def split_items(self, root):
    labels = {}
    if (root / LABELS).exists():
      for line, rec in checks.read_jsonl(root / LABELS):
        if isinstance(rec, dict) and isinstance(rec.get('path_to_image'), str):
          labels[checks.relative_path(rec['path_to_image'], 'path_to_image')[0]] = (line, rec)
    out: dict[str, list] = {}
    for line, row in checks.read_csv(root / CSV, COLUMNS, root):
      path, refused = checks.relative_path(row['path_to_image'], 'path_to_image')
      item = {'id': path.rsplit('.', 1)[0], 'file': CSV, 'row': line, 'path': path,
              'report': {'findings': row['section_findings'],
                         'impression': ' '.join(filter(None, (
                           row['section_impression'], row.get('section_end_of_impression'))))},
              'labels': labels.get(path, (None, None))[1]}
      if refused or row['split'] not in SPLITS:
        item['reject'] = refused or f"split: unknown value {row['split']!r}"
      split = SPLITS.get(row['split'], 'train')
      if 'reject' in item or self.keeps_view(row['frontal_lateral'], split):
        out.setdefault(split, []).append(item)
    return out

  def make_example(self, item, split):
    root = epath.Path(item['root'])
    png = 'PNG/' + item['path'].rsplit('.', 1)[0] + '.png'
    rel = png if (root / png).exists() or not (root / item['path']).exists() else item['path']
    labels = {}
    for obs in schema.CHEXPERT_OBSERVATIONS:
      value = (item['labels'] or {}).get(obs)
      if value is not None:
        labels[obs] = checks.chexpert_label(json.dumps(float(value))
                                            if isinstance(value, (int, float)) else str(value),
                                            f'{LABELS} {obs}')
    report = {k: ' '.join(v.split()) for k, v in item['report'].items()}
    image, _ = checks.read_image(root, rel)
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               report=report, labels={k: v for k, v in labels.items()
                                                      if v is not None})
