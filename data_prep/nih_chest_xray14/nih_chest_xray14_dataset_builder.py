"""NIH ChestX-ray14: Data_Entry_2017.csv labels, BBox_List_2017.csv boxes, 1024x1024 PNGs.

manual_dir: the folder with `Data_Entry_2017.csv` (or the 2020 re-release
`Data_Entry_2017_v2020.csv`), `BBox_List_2017.csv`, `train_val_list.txt`,
`test_list.txt` and `images/` (the `images_XXX.tar.gz` archives extracted there; the
Kaggle layout `images_XXX/images/` works too). Splits: train (train_val_list.txt) and
test (test_list.txt); the publisher has no val split.

Labels: the 14 NLP-mined findings are exhaustive, so a mapped CheXpert observation is
1 when listed and 0 otherwise: Effusion -> Pleural Effusion, Infiltration -> Lung
Opacity, Mass and Nodule -> Lung Lesion, Pleural_Thickening -> Pleural Other, and
Atelectasis, Cardiomegaly, Consolidation, Edema, Pneumonia, Pneumothorax as they are.
Emphysema, Fibrosis and Hernia have no CheXpert observation and are dropped from
`labels`. Boxes ([x, y, w, h] in pixels of the PNG) become [x1, y1, x2, y2] in [0, 1]
of the PNG's own size; `label` is the CheXpert name, `phrase` the NIH name. Pixel
spacing is the original spacing scaled to the PNG.
"""

from __future__ import annotations

import csv
import io

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

TO_CHEXPERT = {
  'Atelectasis': 'Atelectasis', 'Cardiomegaly': 'Cardiomegaly', 'Effusion': 'Pleural Effusion',
  'Infiltration': 'Lung Opacity', 'Infiltrate': 'Lung Opacity', 'Mass': 'Lung Lesion',
  'Nodule': 'Lung Lesion', 'Pneumonia': 'Pneumonia', 'Pneumothorax': 'Pneumothorax',
  'Consolidation': 'Consolidation', 'Edema': 'Edema', 'Pleural_Thickening': 'Pleural Other',
  'Emphysema': None, 'Fibrosis': None, 'Hernia': None, 'No Finding': 'No Finding',
}
ENTRY_FILES = ('Data_Entry_2017.csv', 'Data_Entry_2017_v2020.csv')
SPLIT_LISTS = {'train': 'train_val_list.txt', 'test': 'test_list.txt'}
BOXES = 'BBox_List_2017.csv'


def parse_labels(text: str) -> dict:
  names = [n.strip() for n in (text or '').split('|') if n.strip()]
  unknown = [n for n in names if n not in TO_CHEXPERT]
  if unknown or not names:
    raise builder_lib.Reject(f'Finding Labels: unknown label value {text!r}')
  # In TO_CHEXPERT's order, not a set's: record bytes must not depend on the hash seed.
  labels = {obs: 0 for obs in dict.fromkeys(TO_CHEXPERT.values()) if obs}
  for n in names:
    if TO_CHEXPERT[n]:
      labels[TO_CHEXPERT[n]] = 1
  return labels


def _rows(path: epath.Path, rel: str, min_fields: int = 0) -> list[tuple[int, list[str]]]:
  """(line, row) of an NIH CSV, header first. Its fields never span lines and its rows
  have at least `min_fields` (0: the header's count): a stray quote would make csv swallow
  every later line into one field, so either is an error naming the line. (checks.read_csv
  wants the header's count exactly: BBox_List_2017.csv's header has 9, its rows 6.)"""
  reader = csv.reader(io.StringIO(checks.read_text(path, rel), newline=''))
  rows = list(checks.csv_rows(reader, rel))
  want = min_fields or (len(rows[0][1]) if rows else 0)
  for line, row in rows:
    if any('\n' in c or '\r' in c for c in row) or (
        len(row) < want and any(c.strip() for c in row)):
      raise builder_lib.ManualDirError(
        f'{rel}: line {line}: malformed CSV: ' + (
          'a field spans lines' if len(row) >= want else
          f'{len(row)} fields where {want} are expected') + ' (an unbalanced quote there?)')
  return rows


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """NIH ChestX-ray14 frontal radiographs with 14 finding labels and 984 boxes."""

  name = 'nih_chest_xray14'
  SOURCE = 'nih-chest-xray14'
  HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
  REQUIRE_TEXT = False
  REQUIRED_FILES = (BOXES, 'train_val_list.txt', 'test_list.txt')  # + images: below
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download the NIH ChestX-ray14 release (Data_Entry_2017.csv, BBox_List_2017.csv, '
    'train_val_list.txt, test_list.txt and images_001..012.tar.gz), extract the image '
    'archives into images/ beside the CSVs, and pass that folder.')

  def split_items(self, root):
    entry = checks.find_one(root, ENTRY_FILES, 'NIH ChestX-ray14')
    images = {p.name: f'images/{p.name}' for p in (root / 'images').glob('*.png')}
    for p in root.glob('images_*/images/*.png'):
      images.setdefault(p.name, f'{p.parent.parent.name}/images/{p.name}')
    if not images and not (root / 'images').is_dir():
      raise builder_lib.ManualDirError(
        f'{self.name}: {root} does not look like the dataset: expected images/ (or '
        f"Kaggle's images_XXX/images/) in it.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    split_of, in_both = {}, set()
    for split, name in SPLIT_LISTS.items():
      for line in checks.read_text(root / name, name).split():
        if split_of.setdefault(line.strip(), split) != split:
          in_both.add(line.strip())  # a test film in train: its record is rejected
    boxes: dict[str, list] = {}
    for line, row in _rows(root / BOXES, BOXES, min_fields=6)[1:]:
      if any(c.strip() for c in row):
        boxes.setdefault(row[0].strip(), []).append((line, row))
    rows = _rows(entry, entry.name)
    if not rows:
      raise builder_lib.ManualDirError(f'{entry.name}: empty (no header, no rows); download '
                                       'it again')
    header = rows[0][1]
    want = ['Image Index', 'Finding Labels', 'View Position', 'OriginalImage[Width', 'Height]',
            'OriginalImagePixelSpacing[x', 'y]']
    if [h for h in want if h not in header]:
      raise builder_lib.ManualDirError(f'{entry.name}: header {header} lacks {want}')
    col = {h: header.index(h) for h in want}
    out = {'train': [], 'test': []}
    seen = set()
    for line, row in rows[1:]:
      if not any(c.strip() for c in row):
        continue
      fields = {h: (row[i].strip() if i < len(row) else '') for h, i in col.items()}
      name = fields['Image Index']
      seen.add(name)
      item = {'id': name.rsplit('.', 1)[0], 'file': entry.name, 'row': line, 'fields': fields,
              'image': images.get(name, f'images/{name}'), 'boxes': boxes.get(name, [])}
      if name not in split_of:
        item['reject'] = f'{name}: in neither train_val_list.txt nor test_list.txt'
      elif name in in_both:
        item['reject'] = f'{name}: in both train_val_list.txt and test_list.txt'
      out[split_of.get(name, 'train')].append(item)
    for name, rows_ in boxes.items():  # boxes of an image the label file does not have
      if name not in seen:
        line = rows_[0][0]
        out[split_of.get(name, 'train')].append({
          'id': name.rsplit('.', 1)[0], 'file': BOXES, 'row': line,
          'reject': f'{name}: has boxes but no row in {entry.name}'})
    return out

  def make_example(self, item, split):
    f = item['fields']
    labels = parse_labels(f['Finding Labels'])
    image, size = checks.read_image(epath.Path(item['root']), item['image'], formats=('png',))
    try:
      w0, sx = checks.number(f['OriginalImage[Width'], 'OriginalImage[Width'), checks.number(
        f['OriginalImagePixelSpacing[x'], 'OriginalImagePixelSpacing[x')
      h0, sy = checks.number(f['Height]'], 'Height]'), checks.number(
        f['y]'], 'OriginalImagePixelSpacing[y]')
      image['spacing'] = [sx * w0 / size[0], sy * h0 / size[1]]
    except builder_lib.Reject:
      image['spacing'] = None  # spacing is optional; labels and pixels are what matter
    boxes = []
    for line, row in item['boxes']:
      where = f'{BOXES} row {line}'
      if len(row) < 6:
        raise builder_lib.Reject(f'{where}: expected 6 columns, got {len(row)}')
      label = row[1].strip()
      if label not in TO_CHEXPERT or not TO_CHEXPERT[label]:
        raise builder_lib.Reject(f'{where}: unknown box label {label!r}')
      x, y, w, h = (checks.number(v, f'{where} Bbox') for v in row[2:6])
      box = checks.pixel_box(x, y, x + w, y + h, size, where)
      boxes.append({'box': box, 'label': TO_CHEXPERT[label], 'phrase': label})
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split,
                               images=[image], labels=labels, boxes=boxes)
