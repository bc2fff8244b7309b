"""MIMIC-CXR-JPG + reports builder on a fixture in PhysioNet's layout, with planted
bad records; the frontal-only config."""
import csv
import glob
import gzip
import io
import os

import pytest

from data_prep import reports
from tests import data_prep_fixtures as fx

LABELS = ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Enlarged Cardiomediastinum',
          'Fracture', 'Lung Lesion', 'Lung Opacity', 'No Finding', 'Pleural Effusion',
          'Pleural Other', 'Pneumonia', 'Pneumothorax', 'Support Devices']
META = ['dicom_id', 'subject_id', 'study_id', 'PerformedProcedureStepDescription', 'ViewPosition',
        'Rows', 'Columns', 'StudyDate', 'StudyTime', 'ProcedureCodeSequence_CodeMeaning',
        'ViewCodeSequence_CodeMeaning', 'PatientOrientationCodeSequence_CodeMeaning']
REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ with cough  // eval for pneumonia

 COMPARISON:  None.

 FINDINGS:

 The lungs are clear without focal consolidation.  No pleural effusion or
 pneumothorax.  The cardiomediastinal silhouette is {size}.

 IMPRESSION:

 No acute cardiopulmonary process.
"""


def write_gz_csv(path, header, rows):
  buf = io.StringIO()
  w = csv.writer(buf)
  w.writerow(header)
  w.writerows(rows)
  with gzip.open(path, 'wt') as f:
    f.write(buf.getvalue())


def dicom_id(i):
  return f'{i:08x}-bde0afdd-112c0b34-7bc16630-4e384014'


@pytest.fixture(scope='module')
def mimic(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('mimic_src'))
  studies = [('10000032', '50414267'), ('10000032', '53189527'), ('10000764', '57375967'),
             ('10000898', '50771383'), ('10000935', '51178377'), ('10001038', '52129462')]
  split_rows, meta_rows, label_rows = [], [], []
  for n, (subject, study) in enumerate(studies):
    for k, view in enumerate(('PA', 'LATERAL')):
      d = dicom_id(10 * n + k)
      split = ('train', 'test', 'validate', 'train', 'train', 'train')[n]
      split_rows.append([d, study, subject, split])
      meta_rows.append([d, subject, study, 'CHEST (PA AND LAT)', view, 3056, 2544, 21800506,
                        213014.531, 'CHEST (PA AND LAT)', 'postero-anterior', 'Erect'])
      fx.write_file(os.path.join(root, f'files/p{subject[:2]}/p{subject}/s{study}/{d}.jpg'),
                    fx.image_bytes(seed=n))
    labels = [''] * 14
    labels[LABELS.index('No Finding')] = '1.0'
    labels[LABELS.index('Pleural Effusion')] = '-1.0'
    label_rows.append([subject, study] + labels)
    text = REPORT.format(size='normal')
    if n == 3:
      text = ' WET READ: ___ 9:40 PM  no pneumonia.\n'  # no findings or impression
    if n != 4:  # study 4 has no report file
      fx.write_file(os.path.join(root, f'files/p{subject[:2]}/p{subject}/s{study}.txt'),
                    text.encode())
  label_rows[5][2 + LABELS.index('Edema')] = 'x'  # unknown label value
  fx.write_file(os.path.join(root, f'files/p10/p10000764/s57375967/{dicom_id(21)}.jpg'),
                fx.image_bytes()[:100])  # truncated JPEG
  write_gz_csv(os.path.join(root, 'mimic-cxr-2.0.0-split.csv.gz'),
               ['dicom_id', 'study_id', 'subject_id', 'split'], split_rows)
  write_gz_csv(os.path.join(root, 'mimic-cxr-2.0.0-metadata.csv.gz'), META, meta_rows)
  write_gz_csv(os.path.join(root, 'mimic-cxr-2.0.0-chexpert.csv.gz'),
               ['subject_id', 'study_id'] + LABELS, label_rows)
  return root


def test_report_sections():
  parts = reports.findings_impression(REPORT.format(size='normal'))
  assert parts == {'findings': 'The lungs are clear without focal consolidation. No pleural '
                   'effusion or pneumothorax. The cardiomediastinal silhouette is normal.',
                   'impression': 'No acute cardiopulmonary process.'}
  assert reports.findings_impression(' WET READ: no pneumonia.') == {
    'findings': '', 'impression': ''}


def test_all_views(mimic, tmp_path):
  path, manifest = fx.build('mimic_cxr', mimic, str(tmp_path))
  assert manifest['counts'] == {'train': 2, 'val': 1, 'test': 2}
  train = fx.examples(path, 'train')
  assert [e['id'] for e in train] == [dicom_id(0), dicom_id(1)]
  ex = train[0]
  assert ex['report']['impression'] == 'No acute cardiopulmonary process.'
  assert ex['report']['findings'].endswith('The cardiomediastinal silhouette is normal.')
  assert ex['labels'] == {'No Finding': 1, 'Pleural Effusion': -1}
  rejects = fx.rejects(path)
  assert "Edema: unknown label value 'x'" in rejects[dicom_id(50)]['reason']
  assert 'unreadable image' in rejects[dicom_id(21)]['reason']
  assert 'no FINDINGS or IMPRESSION' in rejects[dicom_id(30)]['reason']
  assert 'report file missing' in rejects[dicom_id(40)]['reason']
  assert rejects[dicom_id(40)]['file'] == 'mimic-cxr-2.0.0-split.csv.gz'
  assert manifest['num_rejects'] == 7


def test_frontal_only(mimic, tmp_path):
  path, manifest = fx.build('mimic_cxr', mimic, str(tmp_path), config='frontal')
  assert path.endswith('mimic_cxr/frontal/1.0.0')
  assert [e['id'] for e in fx.examples(path, 'train')] == [dicom_id(0)]
  assert manifest['views'] == ['PA', 'AP']
  assert manifest['filtered_by_view'] == {'train': 4, 'val': 1, 'test': 1}  # the 6 laterals
  assert manifest['num_rejects'] == 3


def test_cli_path_mistakes_are_one_line_errors(mimic, tmp_path, capsys):
  from data_prep import __main__ as cli
  path, _ = fx.build('mimic_cxr', mimic, str(tmp_path / 'out'))
  assert cli.main(['show', str(tmp_path / 'out' / 'mimic_cxr')]) == 2  # the version dir left off
  err = capsys.readouterr().err
  assert 'is not a dataset dir; the ones below it: ' + path in err
  assert cli.main(['show', path, '--split', 'validate']) == 2
  assert 'dataset dir: ' in capsys.readouterr().err  # not config.data.dir: no config here
  a_file = tmp_path / 'a_file'
  a_file.write_text('mine')
  assert cli.main(['build', 'mimic_cxr', '--manual_dir', mimic, '--data_dir', str(a_file)]) == 2
  assert 'Not a directory' in capsys.readouterr().err and a_file.read_text() == 'mine'


def test_frontal_only_rejects_an_image_the_metadata_lacks(mimic, tmp_path):
  """No metadata row: no view to filter by, so a reject naming the CSV (as the default
  config does), not a silent count in filtered_by_view."""
  import csv
  import gzip
  import shutil
  root = str(tmp_path / 'src')
  shutil.copytree(mimic, root)
  meta = os.path.join(root, 'mimic-cxr-2.0.0-metadata.csv.gz')
  with gzip.open(meta, 'rt') as f:
    rows = list(csv.reader(f))
  frontal_rejects = list(fx.rejects(fx.build('mimic_cxr', mimic, str(tmp_path / 'a'),
                                             config='frontal')[0]))
  gone = frontal_rejects[0]
  write_gz_csv(meta, rows[0], [r for r in rows[1:] if r[0] != gone])
  path, manifest = fx.build('mimic_cxr', root, str(tmp_path / 'out'), config='frontal')
  assert 'no row in mimic-cxr-2.0.0-metadata' in fx.rejects(path)[gone]['reason']
  assert manifest['filtered_by_view'] == {'train': 4, 'val': 1, 'test': 1}
  assert manifest['num_rejects'] == 3


def test_report_sections_edge_cases():
  f = reports.findings_impression
  # A header on the first line, its text right after the colon.
  assert f('FINDINGS:Clear lungs.\nIMPRESSION:Normal.') == {
    'findings': 'Clear lungs.', 'impression': 'Normal.'}
  # The first of a repeated header (an addendum's) is kept.
  assert f('FINDINGS: Clear.\nIMPRESSION: Normal.\nADDENDUM: x\nFINDINGS: Other.')[
    'findings'] == 'Clear.'
  # An empty section falls through to the next alias; CONCLUSION is an impression.
  assert f('FINDINGS: Clear.\nIMPRESSION:\n\nCONCLUSION: No acute process.')[
    'impression'] == 'No acute process.'
  assert f('FINDINGS AND IMPRESSION: Normal chest.') == {
    'findings': 'Normal chest.', 'impression': ''}


def test_reports_extracted_beside_the_images(mimic, tmp_path):
  """mimic-cxr-reports.zip extracted beside files/ (mimic-cxr-reports/files/...), as the
  docstring allows: files/ is always there (the JPEGs), so it was taken as the report
  root and the build failed with 'no reports'."""
  import shutil
  root = str(tmp_path / 'src')
  shutil.copytree(mimic, root)
  for txt in glob.glob(os.path.join(root, 'files', 'p*', 'p*', 's*.txt')):
    rel = os.path.relpath(txt, root)
    os.makedirs(os.path.dirname(os.path.join(root, 'mimic-cxr-reports', rel)), exist_ok=True)
    shutil.move(txt, os.path.join(root, 'mimic-cxr-reports', rel))
  path, manifest = fx.build('mimic_cxr', root, str(tmp_path / 'out'))
  assert manifest['counts'] == {'train': 2, 'val': 1, 'test': 2}
  assert fx.examples(path, 'train')[0]['report']['impression'] == (
    'No acute cardiopulmonary process.')
  assert 'mimic-cxr-reports/files/p10/p10000935/s51178377.txt: report file missing' in (
    fx.rejects(path)[dicom_id(40)]['reason'])


def test_an_empty_repeated_section_does_not_hide_its_text():
  """MIMIC-CXR reports with two FINDINGS headers, one of them empty (MIT-LCP's section
  parser drops such empty ones: 'when there are multiple findings sections usually one is
  empty'): the first, empty one was kept and the findings lost."""
  text = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old man with intubation  // ETT position

 FINDINGS:

 FINDINGS:  Endotracheal tube terminates 4 cm above the carina.  Lungs are clear.

 IMPRESSION:

 IMPRESSION:  ET tube in standard position.
"""
  assert reports.findings_impression(text) == {
    'findings': 'Endotracheal tube terminates 4 cm above the carina. Lungs are clear.',
    'impression': 'ET tube in standard position.'}


def test_findings_slash_impression_header():
  """MIMIC-CXR's 'FINDINGS/IMPRESSION:' header (47 reports by MIT-LCP's count, and one
  'FINDINGS/ IMPRESSION:') is a combined section like 'FINDINGS AND IMPRESSION:'; a report
  with it alone was rejected as having neither section."""
  for header in ('FINDINGS/IMPRESSION', 'FINDINGS/ IMPRESSION'):
    text = f' INDICATION:  Cough.\n\n {header}:  No acute cardiopulmonary process.\n'
    assert reports.findings_impression(text)['findings'] == (
      'No acute cardiopulmonary process.'), header
