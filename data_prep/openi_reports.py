"""Indiana University / OpenI chest X-ray reports, read from the torchxrayvision wheel.

The wheel ships `torchxrayvision/data/NLMCXR_reports.tgz` (3,955 report XMLs,
CC BY-NC-ND 4.0). These are the only real radiology texts available offline, so
the embedded demo dataset and the evaluation code (labeler agreement against the
MeSH annotations) both read them through this module.

We locate the package directory without importing it: importing
torchxrayvision pulls in torch, which this project does not install.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator

INSTALL_HINT = 'pip install --no-deps torchxrayvision==1.5.7'
TGZ_RELATIVE = os.path.join('data', 'NLMCXR_reports.tgz')
LICENSE = 'OpenI / Indiana University report texts: CC BY-NC-ND 4.0'


def reports_archive_path() -> str:
  """Path of NLMCXR_reports.tgz inside the installed torchxrayvision package."""
  spec = importlib.util.find_spec('torchxrayvision')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'The OpenI reports come from the torchxrayvision wheel, which is not '
      f'installed. Install it without its torch dependency: {INSTALL_HINT}'
    )
  path = os.path.join(list(spec.submodule_search_locations)[0], TGZ_RELATIVE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing; reinstall with: {INSTALL_HINT}')
  return path


def _text(element: ET.Element | None) -> str:
  # Empty sections appear as <AbstractText Label="FINDINGS"/> with text None.
  if element is None or element.text is None:
    return ''
  return ' '.join(element.text.split())


def parse_report(xml_bytes: bytes, report_id: int) -> dict:
  """One report XML -> {"id", "findings", "impression", "mesh", "automatic"}."""
  root = ET.fromstring(xml_bytes)
  sections = {}
  for node in root.iter('AbstractText'):
    sections[node.get('Label', '').upper()] = _text(node)
  mesh = root.find('MeSH')
  major = [_text(m) for m in mesh.findall('major')] if mesh is not None else []
  automatic = [_text(m) for m in mesh.findall('automatic')] if mesh is not None else []
  return {
    'id': report_id,
    'findings': sections.get('FINDINGS', ''),
    'impression': sections.get('IMPRESSION', ''),
    'mesh': [m for m in major if m],
    'automatic': [a for a in automatic if a],
  }


def iter_reports(path: str | None = None) -> Iterator[dict]:
  """Yields every report in the archive, ordered by numeric id."""
  path = path or reports_archive_path()
  with tarfile.open(path, 'r:gz') as tar:
    members = []
    for member in tar.getmembers():
      match = re.search(r'(\d+)\.xml$', member.name)
      if member.isfile() and match:
        members.append((int(match.group(1)), member))
    members.sort(key=lambda m: m[0])
    for report_id, member in members:
      f = tar.extractfile(member)
      if f is not None:
        yield parse_report(f.read(), report_id)


@functools.lru_cache(maxsize=2)
def load_reports(path: str | None = None) -> tuple[dict, ...]:
  """All reports, parsed once per process (about 1 s) and cached.

  Callers must not mutate the returned dicts.
  """
  return tuple(iter_reports(path))


def mesh_headings(report: dict) -> list[str]:
  """The MeSH descriptors without qualifiers: "Cardiomegaly/mild" -> "Cardiomegaly"."""
  return [m.split('/')[0].strip() for m in report['mesh']]


# MeSH descriptor -> observation. A tuple value also requires one of the
# qualifiers (the "/..." parts), e.g. "Cardiac Shadow/enlarged" but not
# "Cardiac Shadow/borderline".
MESH_TO_OBSERVATION: dict[str, tuple[str, tuple[str, ...]]] = {
  'Cardiomegaly': ('Cardiomegaly', ()),
  'Cardiac Shadow': ('Cardiomegaly', ('enlarged',)),
  'Mediastinum': ('Enlarged Cardiomediastinum', ('enlarged', 'widened', 'prominent')),
  'Opacity': ('Lung Opacity', ()),
  'Infiltrate': ('Lung Opacity', ()),
  'Density': ('Lung Opacity', ()),
  'Airspace Disease': ('Lung Opacity', ()),
  'Nodule': ('Lung Lesion', ()),
  'Mass': ('Lung Lesion', ()),
  'Pulmonary Edema': ('Edema', ()),
  'Pulmonary Congestion': ('Edema', ()),
  'Consolidation': ('Consolidation', ()),
  'Pneumonia': ('Pneumonia', ()),
  'Pulmonary Atelectasis': ('Atelectasis', ()),
  'Pneumothorax': ('Pneumothorax', ()),
  'Hydropneumothorax': ('Pneumothorax', ()),
  'Hemopneumothorax': ('Pneumothorax', ()),
  'Pleural Effusion': ('Pleural Effusion', ()),
  'Costophrenic Angle': ('Pleural Effusion', ('blunted',)),
  'Thickening': ('Pleural Other', ('pleura',)),
  'Cicatrix': ('Pleural Other', ('pleura',)),
  'Calcinosis': ('Pleural Other', ('pleura',)),
  'Fractures, Bone': ('Fracture', ()),
  'Catheters, Indwelling': ('Support Devices', ()),
  'Implanted Medical Device': ('Support Devices', ()),
  'Medical Device': ('Support Devices', ()),
  'Surgical Instruments': ('Support Devices', ()),
  'Tube, Inserted': ('Support Devices', ()),
  'Stents': ('Support Devices', ()),
}


def mesh_observations(mesh: list[str]) -> set[str]:
  """CheXpert observations a report's major MeSH terms assert."""
  out = set()
  for term in mesh:
    heading, *qualifiers = [p.strip().lower() for p in term.split('/')]
    for name, (obs, required) in MESH_TO_OBSERVATION.items():
      if heading == name.lower() and (not required or set(required) & set(qualifiers)):
        out.add(obs)
  return out
