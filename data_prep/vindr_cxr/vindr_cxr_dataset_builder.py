"""VinDr-CXR: DICOM radiographs with several radiologists' boxes per image.

manual_dir: the Kaggle VinBigData layout (`train.csv` + `train/<image_id>.dicom`) or
PhysioNet's VinDr-CXR 1.0.0 (`annotations/annotations_train.csv`,
`annotations/annotations_test.csv`, `train/`, `test/`). Splits: train, and test where
the annotations have it.

Each image's rows (one per radiologist finding; "No finding" rows have no box) become
one Example: the DICOM converted to an 8-bit PNG (data_prep/dicom.py), boxes fused per
class with weighted boxes fusion at iou_thr=0.1 (as RadVLM did with ensemble_boxes),
normalised to [0, 1] by the DICOM's own Columns and Rows. `label` is the CheXpert
observation where one matches, else the VinDr class; `phrase` is the VinDr class.
Labels: matched observations 1 if boxed, else 0; No Finding 1 only without any box.
"""

from __future__ import annotations

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks, dicom, wbf
from radjax.data import schema

IOU_THR = 0.1
NO_FINDING = 'No finding'
TO_CHEXPERT = {
  'Aortic enlargement': 'Enlarged Cardiomediastinum', 'Atelectasis': 'Atelectasis',
  'Calcification': None, 'Cardiomegaly': 'Cardiomegaly', 'Clavicle fracture': 'Fracture',
  'Consolidation': 'Consolidation', 'Edema': 'Edema', 'Emphysema': None, 'Enlarged PA': None,
  'ILD': None, 'Infiltration': 'Lung Opacity', 'Lung Opacity': 'Lung Opacity',
  'Lung cavity': None, 'Lung cyst': None, 'Mediastinal shift': None,
  'Nodule/Mass': 'Lung Lesion', 'Other lesion': None, 'Pleural effusion': 'Pleural Effusion',
  'Pleural thickening': 'Pleural Other', 'Pneumothorax': 'Pneumothorax',
  'Pulmonary fibrosis': None, 'Rib fracture': 'Fracture', NO_FINDING: 'No Finding',
}
LAYOUTS = {  # annotation file -> (split, image folder)
  'train.csv': ('train', 'train'),
  'annotations/annotations_train.csv': ('train', 'train'),
  'annotations/annotations_test.csv': ('test', 'test'),
}
COLUMNS = ('image_id', 'class_name', 'x_min', 'y_min', 'x_max', 'y_max')


def fuse(rows: list[tuple[int, dict]], size: tuple[int, int], where: str) -> list[dict]:
  """One image's annotation rows -> fused, normalised boxes."""
  boxes, labels = [], []
  for line, row in rows:
    cls = row['class_name'].strip()
    if cls not in TO_CHEXPERT:
      raise builder_lib.Reject(f'{where} row {line}: unknown class_name {cls!r}')
    if cls == NO_FINDING:
      continue
    coords = [checks.number(row[c], f'{where} row {line} {c}') for c in COLUMNS[2:]]
    boxes.append(checks.pixel_box(*coords, size, f'{where} row {line}'))
    labels.append(cls)
  out = []
  for box, cls, _ in wbf.weighted_boxes_fusion(boxes, labels, iou_thr=IOU_THR):
    out.append({'box': box, 'label': TO_CHEXPERT[cls] or cls, 'phrase': cls})
  return out


def box_labels(boxes: list[dict]) -> dict:
  """Each mapped observation 1 when a fused box has it, else 0; No Finding when none.
  Keys in TO_CHEXPERT's order, not a set's: a record's bytes must not depend on the
  process's hash seed (Beam workers are other processes)."""
  labels = {obs: 0 for obs in dict.fromkeys(TO_CHEXPERT.values()) if obs}
  for b in boxes:
    if TO_CHEXPERT[b['phrase']]:
      labels[TO_CHEXPERT[b['phrase']]] = 1
  labels['No Finding'] = int(not boxes)
  return labels


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """VinDr-CXR radiographs (DICOM) with radiologists' boxes fused per class."""

  name = 'vindr_cxr'
  SOURCE = 'vindr-cxr'
  HOMEPAGE = 'https://physionet.org/content/vindr-cxr/1.0.0/'
  REQUIRE_TEXT = False
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download VinDr-CXR from PhysioNet (credentialed) or the Kaggle VinBigData '
    'competition and pass the folder that holds train.csv (Kaggle) or annotations/ '
    '(PhysioNet) and the train/ DICOMs.')

  def split_items(self, root):
    checks.find_one(root, ('train.csv', 'annotations/annotations_train.csv'), 'VinDr-CXR')
    out = {}
    for rel, (split, folder) in LAYOUTS.items():
      if not (root / rel).exists() or (split in out and rel == 'train.csv'):
        continue
      by_image: dict[str, list] = {}
      for line, row in checks.read_csv(root / rel, COLUMNS, root):
        by_image.setdefault(row['image_id'].strip(), []).append((line, row))
      out[split] = [{'id': image_id, 'file': rel, 'row': rows[0][0], 'rows': rows,
                     'image': f'{folder}/{image_id}.dicom'}
                    for image_id, rows in by_image.items()]
    return out

  def make_example(self, item, split):
    path = epath.Path(item['root']) / item['image']
    if not path.exists():
      raise builder_lib.Reject(f"{item['image']}: image file missing")
    image, size, _ = dicom.read_dicom(path.read_bytes(), item['image'])
    boxes = fuse(item['rows'], size, item['file'])
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               labels=box_labels(boxes), boxes=boxes)
