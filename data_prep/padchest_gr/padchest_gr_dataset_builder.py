"""PadChest-GR: grounded radiology reports (BIMCV), each finding sentence with its boxes.

manual_dir: the folder with `grounded_reports_20240819.json` (a list of
`{"ImageID", "findings": [{"sentence_en", "boxes": [[x1, y1, x2, y2], ...], ...}]}`,
boxes as fractions of the image), `master_table.csv` (`ImageID`, `split`) and
`images_grounding/<ImageID>` (16-bit PNGs, kept as they are).

One Example per image: findings = its English sentences in order; boxes = each boxed
sentence's boxes with `phrase` = the sentence (`label` is the sentence too: PadChest-GR
names no CheXpert class). Splits: train, validation -> val, test.
"""

from __future__ import annotations

import json

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

REPORTS = 'grounded_reports_20240819.json'
MASTER = 'master_table.csv'
IMAGES = 'images_grounding'
SPLITS = {'train': 'train', 'validation': 'val', 'val': 'val', 'test': 'test'}


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """PadChest-GR finding sentences with their boxes."""

  name = 'padchest_gr'
  SOURCE = 'padchest-gr'
  HOMEPAGE = 'https://bimcv.cipf.es/bimcv-projects/padchest-gr/'
  REQUIRED_FILES = (REPORTS, MASTER, IMAGES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f'Download PadChest-GR from BIMCV and pass the folder with {REPORTS}, {MASTER} and '
    f'{IMAGES}/.')

  def split_items(self, root):
    split_of = {row['ImageID']: row['split'].strip() for _, row in
                checks.read_csv(root / MASTER, ('ImageID', 'split'), root)}
    try:
      entries = json.loads(checks.read_text(root / REPORTS, REPORTS))
      assert isinstance(entries, list)
    except (json.JSONDecodeError, AssertionError) as e:
      raise builder_lib.ManualDirError(f'{REPORTS}: expected a JSON list of reports: {e!r}')
    out: dict[str, list] = {}
    for k, entry in enumerate(entries):
      ok = isinstance(entry, dict) and isinstance(entry.get('ImageID'), str)
      image_id = entry['ImageID'] if ok else f'entry-{k}'
      item = {'id': image_id, 'file': REPORTS, 'row': k, 'entry': entry}
      split = SPLITS.get(split_of.get(image_id, ''))
      if not ok:
        item['reject'] = f'{REPORTS}[{k}]: no ImageID'
      elif split is None:
        item['reject'] = (f'{image_id}: not in {MASTER}' if image_id not in split_of else
                          f'split: unknown value {split_of[image_id]!r}')
      out.setdefault(split or 'train', []).append(item)
    return out

  def make_example(self, item, split):
    findings = item['entry'].get('findings')
    if not isinstance(findings, list):
      raise builder_lib.Reject('findings: missing or not a list')
    sentences, boxes = [], []
    for i, f in enumerate(findings):
      text = ' '.join(str(f.get('sentence_en') or '').split()) if isinstance(f, dict) else ''
      if not text:
        raise builder_lib.Reject(f'findings[{i}].sentence_en: missing or empty')
      sentences.append(text)
      for j, box in enumerate(f.get('boxes') or []):
        if not (isinstance(box, list) and len(box) == 4):
          raise builder_lib.Reject(f'findings[{i}].boxes[{j}]: expected [x1, y1, x2, y2]')
        boxes.append({'box': [float(v) for v in box], 'label': text, 'phrase': text})
    image, _ = checks.read_image(epath.Path(item['root']), f"{IMAGES}/{item['id']}",
                                 formats=('png',))
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               report={'findings': ' '.join(sentences)}, boxes=boxes)
