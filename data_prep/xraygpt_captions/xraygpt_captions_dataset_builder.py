"""XrayGPT's `filter_cap.json`: image id + GPT-cleaned summary (MIMIC-CXR or OpenI).

manual_dir: the folder XrayGPT's storage root points at: `filter_cap.json`
(`{"annotations": [{"image_id": ..., "caption": ...}, ...]}`) and `image/` with
`<image_id>.jpg` (MIMIC: the dicom id) or `<image_id>.png` (OpenI: e.g. `1384_1`).
The summary merges findings and impression, so it becomes the report's findings
(impression left empty). XrayGPT uses a train split only.
"""

from __future__ import annotations

import json

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks
from radjax.data import schema

FILE = 'filter_cap.json'


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """XrayGPT summaries (filter_cap.json) with their MIMIC-CXR or OpenI images."""

  name = 'xraygpt_captions'
  SOURCE = 'xraygpt'
  HOMEPAGE = 'https://github.com/mbzuai-oryx/XrayGPT'
  REQUIRED_FILES = (FILE, 'image')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    f"Pass the folder that holds XrayGPT's {FILE} and its image/ directory (the "
    'build_info.storage of xraygpt/configs/datasets/{mimic,openi}/defaults.yaml).')

  def split_items(self, root):
    try:
      data = json.loads(checks.read_text(root / FILE, FILE))
      annotations = data['annotations']
      assert isinstance(annotations, list)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as e:
      raise builder_lib.ManualDirError(
        f'{FILE}: expected {{"annotations": [{{"image_id", "caption"}}, ...]}}: {e!r}') from e
    items = []
    for k, ann in enumerate(annotations):
      ok = isinstance(ann, dict) and isinstance(ann.get('image_id'), str)
      item = {'id': ann['image_id'] if ok else f'annotation-{k}', 'file': FILE, 'row': k}
      if not ok or not isinstance(ann.get('caption'), str):
        item['reject'] = f'annotations[{k}]: expected string image_id and caption'
      else:
        item['caption'] = ann['caption']
      items.append(item)
    return {'train': items}

  def make_example(self, item, split):
    root = epath.Path(item['root'])
    stem = f"image/{item['id']}"
    rel = next((f'{stem}{ext}' for ext in ('.jpg', '.png') if (root / f'{stem}{ext}').exists()),
               f'{stem}.jpg')
    image, _ = checks.read_image(root, rel)
    # The caption verbatim, as XrayGPT trains on ann['caption'].
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               report={'findings': item['caption']})
