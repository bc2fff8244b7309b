"""OpenI / Indiana University chest X-rays: report XMLs joined with PNGs by image id.

manual_dir: the folder NLMCXR_reports.tgz and NLMCXR_png.tgz were extracted into:
`ecgen-radiology/<n>.xml` and the PNGs (`CXR<n>_<k>_IM-<...>.png`) either beside it
or in `NLMCXR_png/` or `png/`. Each XML's FINDINGS and IMPRESSION become the report, its
major MeSH terms CheXpert labels (1 where a term asserts an observation; No Finding 1
for "normal"; nothing else is asserted), and its `<parentImage id=...>` the images.

Configs: `default`, one Example per report with all its images (id `CXR<n>`), and
`per_image`, one per image (id = the image id), for models that see one image. No
official split: everything is train. Licence: CC BY-NC-ND 4.0 (NLM).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import tensorflow_datasets as tfds
from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks, openi_reports
from radjax.data import schema

IMAGE_DIRS = ('', 'NLMCXR_png/', 'png/')


def parse(xml_text: str, rel: str) -> dict:
  try:
    root = ET.fromstring(xml_text)
  except ET.ParseError as e:
    raise builder_lib.Reject(f'{rel}: not XML: {e}') from e
  sections = {n.get('Label', '').upper(): ' '.join((n.text or '').split())
              for n in root.iter('AbstractText')}
  mesh = [' '.join((m.text or '').split()) for m in root.iter('major')]
  return {'report': {'findings': sections.get('FINDINGS', ''),
                     'impression': sections.get('IMPRESSION', '')},
          'mesh': [m for m in mesh if m],
          'images': [p.get('id') for p in root.iter('parentImage') if p.get('id')]}


def labels_from_mesh(mesh: list[str]) -> dict:
  if [m.lower() for m in mesh] == ['normal']:
    return {'No Finding': 1}
  return {obs: 1 for obs in sorted(openi_reports.mesh_observations(mesh))}


@dataclasses.dataclass(eq=False)
class OpenIConfig(tfds.core.BuilderConfig):
  per_image: bool = False


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """OpenI (Indiana University) chest X-ray reports with their frontal and lateral PNGs."""

  name = 'openi'
  SOURCE = 'openi'
  HOMEPAGE = 'https://openi.nlm.nih.gov/faq#collection'
  REQUIRED_FILES = ('ecgen-radiology',)
  BUILDER_CONFIGS = [OpenIConfig(name='default', description='one Example per report'),
                     OpenIConfig(name='per_image', per_image=True,
                                 description='one Example per image')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download NLMCXR_reports.tgz and NLMCXR_png.tgz from the OpenI collection, extract '
    'both into one folder (ecgen-radiology/ and the PNGs) and pass it.')

  def split_items(self, root):
    xmls = sorted(root.glob('ecgen-radiology/*.xml'),
                  key=lambda p: (int(p.stem) if p.stem.isdigit() else 10**9, p.stem))
    if not xmls:
      raise builder_lib.ManualDirError(f'{root}: expected ecgen-radiology/<n>.xml files')
    image_dir = next((d for d in IMAGE_DIRS if any((root / d).glob('CXR*.png'))), '')
    items = []
    for p in xmls:  # the XMLs are small: parsed here, images read in make_example
      rel = f'ecgen-radiology/{p.name}'
      item = {'id': f'CXR{p.stem}', 'file': rel, 'row': None}
      try:
        parsed = parse(checks.read_text(p, rel), rel)
      except (builder_lib.Reject, builder_lib.ManualDirError) as e:
        items.append({**item, 'reject': str(e)})
        continue
      item.update(report=parsed['report'], labels=labels_from_mesh(parsed['mesh']),
                  images=[f'{image_dir}{i}.png' for i in parsed['images']])
      if not parsed['images']:
        items.append({**item, 'reject': f'{rel}: no parentImage'})
      elif self.builder_config.per_image:
        items += [{**item, 'id': i, 'images': [f'{image_dir}{i}.png']} for i in parsed['images']]
      else:
        items.append(item)
    return {'train': items}

  def make_example(self, item, split):
    root = epath.Path(item['root'])
    images = [checks.read_image(root, rel, formats=('png',))[0] for rel in item['images']]
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=images,
                               report=item['report'], labels=item['labels'])
