"""MIMIC-CXR-JPG images joined with the MIMIC-CXR free-text reports.

manual_dir: the MIMIC-CXR-JPG 2.0.0/2.1.0 folder as PhysioNet distributes it
(`mimic-cxr-2.0.0-split.csv.gz`, `-metadata.csv.gz`, `-chexpert.csv.gz`, and
`files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`), with the reports (`mimic-cxr-reports.zip`
of MIMIC-CXR) extracted either into the same tree (`files/pXX/pSUBJECT/sSTUDY.txt`)
or beside it as `mimic-cxr-reports/files/...`. The CSVs may also be uncompressed.

One Example per image (id = dicom_id): the JPEG, the study's report split into
FINDINGS and IMPRESSION, and the study's CheXpert labels. Splits: train, validate ->
val, test. Config `frontal` keeps PA and AP views only (ViewPosition); the other
images are counted in the manifest as filtered, not rejected.
"""

from __future__ import annotations

from etils import epath

from data_prep import builder as builder_lib
from data_prep import checks, reports
from radjax.data import schema

SPLITS = {'train': 'train', 'validate': 'val', 'test': 'test'}
FRONTAL = ('PA', 'AP')
# The reports' own folders first: files/ always exists (the JPEGs), reports in it or not.
REPORT_ROOTS = ('mimic-cxr-reports/files', 'reports/files', 'files')


def csv_path(root: epath.Path, name: str) -> epath.Path:
  return checks.find_one(root, (f'{name}.csv.gz', f'{name}.csv'), 'MIMIC-CXR-JPG')


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """MIMIC-CXR-JPG chest radiographs with report sections and CheXpert labels."""

  name = 'mimic_cxr'
  SOURCE = 'mimic-cxr'
  HOMEPAGE = 'https://physionet.org/content/mimic-cxr-jpg/'
  BUILDER_CONFIGS = builder_lib.view_configs(FRONTAL, 'PA and AP only')  # ViewPosition
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download MIMIC-CXR-JPG and the MIMIC-CXR reports (mimic-cxr-reports.zip) from '
    'PhysioNet (credentialed); extract the reports into the MIMIC-CXR-JPG folder and '
    'pass that folder.')

  def split_items(self, root):
    split_csv = csv_path(root, 'mimic-cxr-2.0.0-split')
    meta_csv = csv_path(root, 'mimic-cxr-2.0.0-metadata')
    label_csv = csv_path(root, 'mimic-cxr-2.0.0-chexpert')
    report_root = next((r for r in REPORT_ROOTS if any((root / r).glob('p*/p*/s*.txt'))), None)
    if report_root is None:
      raise builder_lib.ManualDirError(
        f'{root}: no reports: expected files/pXX/pSUBJECT/sSTUDY.txt (mimic-cxr-reports.zip '
        'extracted into this folder, or beside files/ as mimic-cxr-reports/files/)')
    views = {row['dicom_id']: row['ViewPosition']
             for _, row in checks.read_csv(meta_csv, ('dicom_id', 'ViewPosition'), root)}
    labels = {(row['subject_id'], row['study_id']): (line, row) for line, row in checks.read_csv(
      label_csv, ('subject_id', 'study_id') + schema.CHEXPERT_OBSERVATIONS, root)}
    out = {split: [] for split in SPLITS.values()}
    for line, row in checks.read_csv(
        split_csv, ('dicom_id', 'study_id', 'subject_id', 'split'), root):
      dicom_id, study, subject = row['dicom_id'], row['study_id'], row['subject_id']
      item = {'id': dicom_id, 'file': split_csv.name, 'row': line,
              'image': f'files/p{subject[:2]}/p{subject}/s{study}/{dicom_id}.jpg',
              'report': f'{report_root}/p{subject[:2]}/p{subject}/s{study}.txt',
              'labels': labels.get((subject, study), (None, None))[1]}
      if row['split'] not in SPLITS:
        item['reject'] = f"split: unknown value {row['split']!r}"
      if dicom_id not in views:  # no view to filter by: a reject in every config
        item['reject'] = f'{dicom_id}: no row in {meta_csv.name}'
      split = SPLITS.get(row['split'], 'train')
      if 'reject' in item or self.keeps_view(views[dicom_id], split):
        out[split].append(item)
    return {k: v for k, v in out.items() if v}

  def make_example(self, item, split):
    root = epath.Path(item['root'])
    labels = {}
    for obs in schema.CHEXPERT_OBSERVATIONS:
      if item['labels'] is not None:
        value = checks.chexpert_label(item['labels'].get(obs), f'chexpert.csv {obs}')
        if value is not None:
          labels[obs] = value
    if not (root / item['report']).exists():
      raise builder_lib.Reject(f"{item['report']}: report file missing")
    report = reports.findings_impression(checks.read_text(root / item['report'], item['report']))
    if not report['findings'] and not report['impression']:
      raise builder_lib.Reject(f"{item['report']}: no FINDINGS or IMPRESSION section")
    image, _ = checks.read_image(root, item['image'], formats=('jpeg',))
    return schema.make_example(id=item['id'], source=self.SOURCE, split=split, images=[image],
                               report=report, labels=labels)
