"""The shared CSV/gzip readers every builder goes through: a malformed file is one error
naming the file and the line its bad row starts on, never rows silently lost."""
import gzip

import pytest

from data_prep import checks
from data_prep.builder import ManualDirError

HEADER = 'Path,Sex,Age,Cardiomegaly\n'


def test_a_stray_quote_in_a_small_file_is_an_error_not_lost_rows(tmp_path):
  # The quote swallows the lines after it into one field under the field limit: csv
  # reads it as one short row (DictReader fills the rest with None), then nothing more.
  path = tmp_path / 'train.csv'
  path.write_text(HEADER + 'a.jpg,Male,41,1.0\nb.jpg,"Male,41,0.0\n' +
                  ''.join(f'c{i}.jpg,Female,50,1.0\n' for i in range(10)))
  with pytest.raises(ManualDirError, match=r'train.csv: line 3: malformed CSV: 2 fields '
                     r'where the header has 4 \(an unbalanced quote there\?\)'):
    list(checks.read_csv(path, ('Path',)))


def test_a_row_with_an_extra_field_is_an_error(tmp_path):
  path = tmp_path / 'valid.csv'
  path.write_text(HEADER + 'a.jpg,Male,41,1.0\nb.jpg,Male,41,0.0,1.0\n')
  with pytest.raises(ManualDirError, match='valid.csv: line 3: malformed CSV: 5 fields'):
    list(checks.read_csv(path, ('Path',)))


def test_a_record_spanning_lines_is_numbered_by_the_line_it_starts_on(tmp_path):
  # CheXpert-Plus reports hold newlines: a reject's `row` must point at the record's path.
  path = tmp_path / 'reports.csv'
  path.write_text('path,report\na.png,"one\ntwo\nthree"\nb.png,short\n\nc.png,"x\ny"\n')
  rows = list(checks.read_csv(path, ('path', 'report')))
  assert [(line, row['path']) for line, row in rows] == [(2, 'a.png'), (5, 'b.png'),
                                                         (7, 'c.png')]


def test_a_cut_off_or_foreign_gzip_names_the_file(tmp_path):
  data = gzip.compress((HEADER + 'a.jpg,Male,41,1.0\n' * 2000).encode())
  cut = tmp_path / 'meta.csv.gz'
  cut.write_bytes(data[:len(data) // 2])  # an interrupted download
  with pytest.raises(ManualDirError, match='files/meta.csv.gz: not a complete gzip file'):
    checks.read_text(cut, 'files/meta.csv.gz')
  plain = tmp_path / 'split.csv.gz'
  plain.write_text(HEADER)  # saved unzipped under the .gz name
  with pytest.raises(ManualDirError, match='split.csv.gz: not a complete gzip file'):
    list(checks.read_csv(plain, ('Path',)))


def test_a_required_column_named_twice_is_an_error(tmp_path):
  """Two `Path` columns (an export merged twice): the row dict kept the last one's value,
  whichever file it named; an unrequired repeat is left alone."""
  path = tmp_path / 'train.csv'
  path.write_text('Path,Sex,Path,Age,Age\nfirst.jpg,Male,second.jpg,41,42\n')
  with pytest.raises(ManualDirError, match=r"train.csv: header repeats columns \['Path'\]"):
    list(checks.read_csv(path, ('Path', 'Sex')))
  assert list(checks.read_csv(path, ('Sex',)))[0][1]['Sex'] == 'Male'
