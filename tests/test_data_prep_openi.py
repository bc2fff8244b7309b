"""OpenI builder on real report XMLs (from the NLMCXR_reports.tgz in the torchxrayvision
wheel) and PNGs named by their parentImage ids, with planted bad records."""
import os
import re
import tarfile

import pytest

from tests import data_prep_fixtures as fx

REPORTS = ['1', '2', '3', '4', '5', '6']


@pytest.fixture(scope='module')
def openi(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('openi_src'))
  with tarfile.open(fx.txv_data('NLMCXR_reports.tgz')) as tar:
    for n in REPORTS:
      member = tar.getmember(f'ecgen-radiology/{n}.xml')
      fx.write_file(os.path.join(root, member.name), tar.extractfile(member).read())
  ids = {}
  for n in REPORTS:
    with open(os.path.join(root, f'ecgen-radiology/{n}.xml')) as f:
      ids[n] = re.findall(r'<parentImage id="([^"]+)"', f.read())
  for n, images in ids.items():
    for i, image in enumerate(images):
      if (n, i) == ('3', 0):
        continue  # planted: missing PNG
      data = fx.image_bytes(fmt='PNG', seed=i)
      if (n, i) == ('4', 0):
        data = data[:50]  # planted: truncated PNG
      fx.write_file(os.path.join(root, 'NLMCXR_png', f'{image}.png'), data)
  fx.write_file(os.path.join(root, 'ecgen-radiology/7.xml'), b'<eCitation><broken')
  with open(os.path.join(root, 'ecgen-radiology/1.xml')) as f:  # no report text at all
    empty = re.sub(r'(<AbstractText Label="(FINDINGS|IMPRESSION)">)[^<]*', r'\1', f.read())
  fx.write_file(os.path.join(root, 'ecgen-radiology/8.xml'), empty.encode())
  return root, ids


def test_reports_images_and_labels(openi, tmp_path):
  root, ids = openi
  path, manifest = fx.build('openi', root, str(tmp_path))
  examples = {e['id']: e for e in fx.examples(path, 'train')}
  assert set(examples) == {'CXR1', 'CXR2', 'CXR5', 'CXR6'}
  first = examples['CXR1']  # the real report 1: normal, two images
  assert first['report']['impression'] == 'Normal chest x-XXXX.'
  assert first['report']['findings'].startswith('The cardiac silhouette and mediastinum size')
  assert first['labels'] == {'No Finding': 1} and len(first['images']) == len(ids['1']) == 2
  rejects = fx.rejects(path)
  assert 'image file missing' in rejects['CXR3']['reason']
  assert 'unreadable image' in rejects['CXR4']['reason']
  assert 'not XML' in rejects['CXR7']['reason']
  assert 'findings and impression both empty' in rejects['CXR8']['reason']
  assert rejects['CXR7']['file'] == 'ecgen-radiology/7.xml' and manifest['num_rejects'] == 4


def test_per_image_config(openi, tmp_path):
  root, ids = openi
  path, manifest = fx.build('openi', root, str(tmp_path), config='per_image')
  got = [e['id'] for e in fx.examples(path, 'train')]
  assert got == [i for n in ('1', '2', '3', '4', '5', '6') for i in ids[n]
                 if i not in (ids['3'][0], ids['4'][0])]
