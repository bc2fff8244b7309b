"""PadChest-GR: grounded radiology reports (BIMCV), each finding sentence with its boxes.

manual_dir: the folder the BIMCV release was put in, as it comes:
  grounded_reports_20240819.json  a list of studies {"StudyID", "ImageID", "findings":
      [{"sentence_en", "sentence_es", "abnormal", "boxes", "extra_boxes", "labels",
        "locations", "progression"}, ...]}; boxes [x1, y1, x2, y2] as fractions of the
      image; sentences of absent findings (abnormal false) often lack boxes / labels.
  master_table.csv (or the zipped master_table.csv.zip it ships as)  one row per
      (study, label) with `ImageID` and `split` (train / validation / test).
  the PNGs (16-bit, kept as they are) extracted from Padchest_GR_files/PadChest_GR.zip.*:
      PadChest_GR/, Padchest_GR_files/PadChest_GR/, Padchest_GR_files/ or RadVLM's
      images_grounding/, whichever holds them.

One Example per image: findings = its English sentences in order (present and absent
findings, as the report reads); boxes = each sentence's `boxes` (the first reader's;
`extra_boxes`, a second reader's set for some sentences, are not used) with `phrase` =
the sentence and `label` = its PadChest labels (e.g. "cardiomegaly"; joined with ", "
when several, the sentence when it has none). Splits: train, validation -> val, test.
"""

from __future__ import annotations

import json

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

REPORTS = 'grounded_reports_20240819.json'
MASTERS = ('master_table.csv', 'master_table.csv.zip')
IMAGE_DIRS = ('PadChest_GR', 'Padchest_GR_files/PadChest_GR', 'Padchest_GR_files',
              'images_grounding')
SPLITS = {'train': 'train', 'validation': 'val', 'val': 'val', 'test': 'test'}


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """PadChest-GR finding sentences with their boxes."""

  name = 'padchest_gr'
  SOURCE = 'padchest-gr'
  HOMEPAGE = 'https://bimcv.cipf.es/bimcv-projects/padchest-gr/'
  REQUIRED_FILES = (REPORTS,)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f'Download PadChest-GR from BIMCV, extract Padchest_GR_files/PadChest_GR.zip.* (one zip '
    f'split in parts) where they are, and pass the folder with {REPORTS} and master_table.csv.')

  def split_items(self, root):
    master = checks.find_one(root, MASTERS, 'PadChest-GR')
    images = next((d for d in IMAGE_DIRS if any((root / d).glob('*.png'))), None)
    if images is None:
      raise builder_lib.ManualDirError(
        f'{root} does not look like PadChest-GR: expected the PNGs in '
        f'{" or ".join(d + "/" for d in IMAGE_DIRS)}\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    split_of, conflicting = {}, {}  # master_table has a row per (study, label)
    for line, row in checks.read_csv(master, ('ImageID', 'split'), root):
      image_id, split = row['ImageID'].strip(), row['split'].strip()
      if split_of.setdefault(image_id, split) != split:
        conflicting[image_id] = (f'{master.name} row {line}: split {split!r}, where an '
                                 f'earlier row has {split_of[image_id]!r}')
    try:
      entries = json.loads(checks.read_text(root / REPORTS, REPORTS))
      assert isinstance(entries, list)
    except (json.JSONDecodeError, AssertionError) as e:
      raise builder_lib.ManualDirError(f'{REPORTS}: expected a JSON list of reports: {e!r}')
    out: dict[str, list] = {}
    for k, entry in enumerate(entries):
      ok = isinstance(entry, dict) and isinstance(entry.get('ImageID'), str)
      image_id = entry['ImageID'] if ok else f'entry-{k}'
      item = {'id': image_id, 'file': REPORTS, 'row': k, 'entry': entry,
              'image': f'{images}/{image_id}'}
      split = SPLITS.get(split_of.get(image_id, ''))
      if not ok:
        item['reject'] = f'{REPORTS}[{k}]: no ImageID'
      elif image_id in conflicting:
        item['reject'] = conflicting[image_id]
      elif split is None:
        item['reject'] = (f'{image_id}: not in {master.name}' if image_id not in split_of else
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
      names = f.get('labels') or []
      if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise builder_lib.Reject(f'findings[{i}].labels: expected a list of label names')
      label = ', '.join(n.strip() for n in names if n.strip()) or text
      for j, box in enumerate(f.get('boxes') or []):
        if not (isinstance(box, list) and len(box) == 4):
          raise builder_lib.Reject(f'findings[{i}].boxes[{j}]: expected [x1, y1, x2, y2]')
        boxes.append({'box': [float(v) for v in box], 'label': label, 'phrase': text})
    image, _ = checks.read_image(epath.Path(item['root']), item['image'], formats=('png',))
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               report={'findings': ' '.join(sentences)}, boxes=boxes)
