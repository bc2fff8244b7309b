"""Chest ImaGenome (PhysioNet): anatomical-region boxes on MIMIC-CXR-JPG frontal images.

manual_dir: the Chest ImaGenome 1.0.0 folder as PhysioNet distributes it, with
`silver_dataset/scene_graph.zip` extracted where it lies (`silver_dataset/scene_graph/
<dicom_id>_SceneGraph.json`) and the silver splits `silver_dataset/splits/{train,valid,
test}.csv` (columns `subject_id, study_id, dicom_id, path, ViewPosition`, after an unnamed
index), plus MIMIC-CXR-JPG's `files/` tree and its `mimic-cxr-2.0.0-split.csv.gz` (or
`.csv`) copied or symlinked in.

One Example per image (id = dicom_id): the JPEG (`files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`)
and one box per scene-graph object, `label` = its `bbox_name` (one of the 36 regions of
radjax.data.instructions.ANATOMICAL_REGIONS, which `anatomical_grounding` asks about),
`phrase` ''. A box is the object's `original_x1, original_y1, original_x2, original_y2`
(pixels of the full-resolution film; `x1..y2` are on the 224-px resampled image and are
not used) divided by the JPEG's own width and height, as RadVLM divides them by MIMIC's
Columns and Rows. The silver boxes were found on a padded, resampled 224-px square, and
mapped back some overhang the film (negative or past its size): they are clipped to it.
A box with no area inside the film, an object without numeric coordinates or with an
unknown region, a scene graph that is missing, not JSON or of another image, and a
missing or unreadable JPEG reject the image with a reason naming the file.

Splits: train, valid -> val, test (the silver splits). Train keeps only the images that
MIMIC-CXR's own split puts in train, as RadVLM's selection does: the others (MIMIC
validate / test films, which report evaluation reads) are counted in the manifest as
`filtered_by_mimic_split`, not rejected; an image MIMIC's split lacks is rejected.
"""

from __future__ import annotations

import json
import math

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema
from radjax.data.instructions import ANATOMICAL_REGIONS

SILVER = 'silver_dataset'
SCENE_GRAPHS = f'{SILVER}/scene_graph'
SPLIT_FILES = {'train': f'{SILVER}/splits/train.csv', 'val': f'{SILVER}/splits/valid.csv',
               'test': f'{SILVER}/splits/test.csv'}
MIMIC_SPLIT = ('mimic-cxr-2.0.0-split.csv.gz', 'mimic-cxr-2.0.0-split.csv')
COLUMNS = ('subject_id', 'study_id', 'dicom_id')
CORNERS = ('x1', 'y1', 'x2', 'y2')
_REGIONS = frozenset(ANATOMICAL_REGIONS)


def scene_graph_path(dicom_id: str) -> str:
  return f'{SCENE_GRAPHS}/{dicom_id}_SceneGraph.json'


def read_scene_graph(root: epath.Path, rel: str, dicom_id: str) -> list:
  """The scene graph's `objects`; a missing, unparseable or foreign file is a Reject."""
  path = root / rel
  if not path.exists():
    raise builder_lib.Reject(f'{rel}: scene graph file missing')
  try:
    graph = json.loads(path.read_bytes())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise builder_lib.Reject(f'{rel}: not a JSON scene graph: {e}') from None
  if not isinstance(graph, dict):
    raise builder_lib.Reject(f'{rel}: not a JSON object but {type(graph).__name__}')
  image_id = graph.get('image_id', dicom_id)
  if image_id != dicom_id:
    raise builder_lib.Reject(f'{rel}: image_id {image_id!r} is not {dicom_id!r}')
  objects = graph.get('objects')
  if not isinstance(objects, list) or not objects:
    raise builder_lib.Reject(f'{rel}: objects: missing, empty or not a list')
  return objects


def region_boxes(objects: list, size: tuple[int, int], rel: str) -> list[dict]:
  """Scene-graph objects -> boxes on the film of `size` (width, height), clipped to it."""
  w, h = size
  boxes = []
  for k, obj in enumerate(objects):
    where = f'{rel} objects[{k}]'
    name = obj.get('bbox_name') if isinstance(obj, dict) else None
    region = ' '.join(name.lower().split()) if isinstance(name, str) else None
    if region not in _REGIONS:
      raise builder_lib.Reject(f'{where}: bbox_name {name!r} is not a Chest ImaGenome region')
    where = f'{where} ({region})'
    x1, y1, x2, y2 = (checks.number(obj.get(f'original_{c}'), f'{where} original_{c}')
                      for c in CORNERS)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
      raise builder_lib.Reject(f'{where}: box {[x1, y1, x2, y2]} is not finite')
    cx1, cx2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
    cy1, cy2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    if not (cx2 > cx1 and cy2 > cy1):
      raise builder_lib.Reject(f'{where}: box {[x1, y1, x2, y2]} has no area inside the '
                               f'{w}x{h} image')
    boxes.append({'box': [cx1 / w, cy1 / h, cx2 / w, cy2 / h], 'label': region, 'phrase': ''})
  return boxes


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """Chest ImaGenome silver scene-graph region boxes on MIMIC-CXR-JPG images."""

  name = 'chest_imagenome'
  SOURCE = 'chest-imagenome'
  HOMEPAGE = 'https://physionet.org/content/chest-imagenome/1.0.0/'
  REQUIRE_TEXT = False
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download Chest ImaGenome 1.0.0 from PhysioNet (credentialed), extract '
    'silver_dataset/scene_graph.zip where it lies (silver_dataset/scene_graph/*.json), put '
    "(or symlink) MIMIC-CXR-JPG's files/ folder and mimic-cxr-2.0.0-split.csv.gz into it, and "
    'pass that folder.')

  def split_items(self, root):
    present = {s: rel for s, rel in SPLIT_FILES.items() if (root / rel).exists()}
    if not present:
      raise builder_lib.ManualDirError(
        f'{root} does not look like Chest ImaGenome: expected '
        f'{" or ".join(SPLIT_FILES.values())} in it')
    if not (root / SCENE_GRAPHS).is_dir():
      zipped = ' (silver_dataset/scene_graph.zip is there: extract it where it lies)' if (
        root / f'{SCENE_GRAPHS}.zip').exists() else ''
      raise builder_lib.ManualDirError(
        f'{root} does not look like Chest ImaGenome: expected the folder {SCENE_GRAPHS}/ in '
        f'it{zipped}')
    mimic_csv = checks.find_one(root, MIMIC_SPLIT, 'Chest ImaGenome with MIMIC-CXR-JPG')
    mimic_split = {row['dicom_id'].strip(): row['split'].strip() for _, row in
                   checks.read_csv(mimic_csv, ('dicom_id', 'split'), root)}
    self._filtered: dict[str, int] = {}
    out = {}
    for split, rel in present.items():
      items = []
      for line, row in checks.read_csv(root / rel, COLUMNS, root):
        dicom_id, subject, study = (row[c].strip() for c in ('dicom_id', 'subject_id',
                                                             'study_id'))
        item = {'id': dicom_id, 'file': rel, 'row': line, 'graph': scene_graph_path(dicom_id),
                'image': f'files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg'}
        if not (dicom_id and subject.isdigit() and study.isdigit()):
          item['reject'] = (f'dicom_id {dicom_id!r}, subject_id {subject!r}, study_id '
                            f'{study!r}: expected an id and two numbers')
        elif split == 'train':
          mimic = mimic_split.get(dicom_id)
          if mimic is None:
            item['reject'] = f'{dicom_id}: no row in {mimic_csv.name}'
          elif mimic != 'train':  # a MIMIC validate / test film: kept out of training
            self._filtered[mimic] = self._filtered.get(mimic, 0) + 1
            continue
        items.append(item)
      out[split] = items
    return out

  def make_example(self, item, split):
    root = epath.Path(item['root'])
    objects = read_scene_graph(root, item['graph'], item['id'])
    image, size = checks.read_image(root, item['image'], formats=('jpeg',))
    boxes = region_boxes(objects, size, item['graph'])
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               boxes=boxes)

  def manifest_extra(self):
    return {'filtered_by_mimic_split': dict(sorted(getattr(self, '_filtered', {}).items()))}
