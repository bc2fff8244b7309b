"""Validators every builder shares: files, CSV headers, images, labels, boxes.

Each raises `builder.Reject` (one record is bad) or `builder.ManualDirError` (the
manual_dir is not the dataset) with a reason that names the file and what is wrong.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import posixpath
import zipfile
import zlib
from collections.abc import Iterator

from etils import epath
from PIL import Image

from data_prep.builder import ManualDirError, Reject
from radjax.data import jpeg_ends, png_rows, schema

# Modes a radiograph may have; palette, CMYK, alpha ... are rejected.
IMAGE_MODES = ('L', 'RGB', 'I;16', 'I;16B', 'I')
ALPHA_MODES = ('LA', 'RGBA')  # accepted only when fully opaque (some NIH PNGs are RGBA)
MIN_SIDE = 8  # a smaller image is a thumbnail or a broken export, not a radiograph
CHEXPERT_VALUES = {'1.0': 1, '1': 1, '0.0': 0, '0': 0, '-1.0': -1, '-1': -1, '': None}


def find_one(root: epath.Path, candidates: tuple[str, ...], what: str) -> epath.Path:
  """The first candidate path that exists under root, else a ManualDirError naming them."""
  for rel in candidates:
    if (root / rel).exists():
      return root / rel
  raise ManualDirError(f'{root} does not look like {what}: expected '
                       f'{" or ".join(candidates)} in it')


# Python's default (131,072 chars) is plenty for a report, but a long one may pass it; a
# field over this is a stray unbalanced quote that swallowed the rest of the file.
CSV_FIELD_LIMIT = 1 << 20


def csv_rows(reader, rel: str) -> Iterator[tuple[int, list[str]]]:
  """(line the row starts on, row) of a csv.reader, blank lines skipped; a malformed row is
  a ManualDirError naming the file and that line (csv.Error names neither)."""
  csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
  while True:
    start = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      hint = ' (an unbalanced quote there?)' if 'field limit' in str(e) else ''
      raise ManualDirError(f'{rel}: line {start}: malformed CSV: {e}{hint}') from e
    if row:
      yield start, row


def read_csv(path: epath.Path, required: tuple[str, ...], root: epath.Path | None = None
             ) -> Iterator[tuple[int, dict]]:
  """(line number, row as a dict) for each data row; a header missing `required` (or
  naming one twice) or a malformed row (one with more or fewer fields than the header) is
  a ManualDirError."""
  rel = str(path.relative_to(root)) if root else str(path)
  rows = csv_rows(csv.reader(io.StringIO(read_text(path, rel), newline='')), rel)
  header = next(rows, (0, []))[1]
  missing = [c for c in required if c not in header]
  if missing:
    raise ManualDirError(f'{rel}: header lacks columns {missing} (has {header})')
  repeated = [c for c in required if header.count(c) > 1]
  if repeated:  # a row's dict would keep the last one's value, unsaid
    raise ManualDirError(f'{rel}: header repeats columns {repeated}: which one to read is '
                         'ambiguous')
  for line, row in rows:
    if len(row) != len(header):  # a stray quote swallows the lines after it: a short row
      raise ManualDirError(f'{rel}: line {line}: malformed CSV: {len(row)} fields where the '
                           f'header has {len(header)} (an unbalanced quote there?)')
    yield line, dict(zip(header, row))


def read_text(path: epath.Path, rel: str = '') -> str:
  """UTF-8 text (a BOM is dropped); anything else is an error naming the file and byte."""
  data = path.read_bytes()
  if path.name.endswith('.gz'):
    try:
      data = gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:  # a cut-off download, or not gzip at all
      raise ManualDirError(f'{rel or path}: not a complete gzip file ({e}); download it '
                           'again') from e
  elif path.name.endswith('.zip'):  # one zipped file, as PadChest-GR ships master_table.csv
    data = _only_member(data, rel or str(path))
  try:
    return data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ManualDirError(f'{rel or path}: not UTF-8 at byte {e.start}') from e


def _only_member(data: bytes, rel: str) -> bytes:
  try:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
      names = [n for n in zf.namelist() if not n.endswith('/') and not n.startswith('__MACOSX/')]
      if len(names) != 1:
        raise ManualDirError(f'{rel}: expected one file in the zip archive, found {names}')
      return zf.read(names[0])
  except zipfile.BadZipFile as e:
    raise ManualDirError(f'{rel}: not a readable zip archive ({e})') from e


def read_jsonl(path: epath.Path) -> Iterator[tuple[int, dict | str]]:
  """(line number, object) per non-empty line; an unparseable line gives its error text."""
  for n, line in enumerate(read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      yield n, json.loads(line)
    except json.JSONDecodeError as e:
      yield n, f'not JSON: {e}'


def check_image_bytes(data: bytes, where: str, formats=('png', 'jpeg')) -> tuple[str, tuple]:
  """Decodes fully; returns (format, (width, height)). Rejects what training could not read."""
  if not data:
    raise Reject(f'{where}: empty file')
  try:
    with Image.open(io.BytesIO(data)) as im:
      fmt = (im.format or '').lower()
      im.load()  # a truncated file passes the header and fails only here
      mode, size = im.mode, im.size
      opaque = mode in ALPHA_MODES and im.getchannel('A').getextrema() == (255, 255)
      cut = fmt == 'jpeg' and jpeg_ends.cut_off(data, im)
      short = fmt == 'png' and png_rows.short_of_rows(data)
  except Exception as e:
    raise Reject(f'{where}: unreadable image: {schema.decode_error(e)}') from e
  if cut:
    raise Reject(f'{where}: {jpeg_ends.CUT_OFF}')
  if short:
    raise Reject(f'{where}: {png_rows.SHORT}')
  if fmt not in formats:
    raise Reject(f'{where}: image format {fmt or "unknown"}, expected {"/".join(formats)}')
  if mode not in IMAGE_MODES and not opaque:
    raise Reject(f'{where}: image mode {mode} is not a grey or RGB radiograph')
  if min(size) < MIN_SIDE:
    raise Reject(f'{where}: degenerate image {size[0]}x{size[1]} (< {MIN_SIDE} px)')
  return fmt, size


def read_image(root: epath.Path, rel: str, formats=('png', 'jpeg')) -> tuple[dict, tuple]:
  """Image file -> (schema image entry with the file's own bytes, (width, height))."""
  path = root / rel
  if not path.exists():
    raise Reject(f'{rel}: image file missing')
  data = path.read_bytes()
  fmt, size = check_image_bytes(data, rel, formats)
  return {'data': data, 'format': fmt, 'kind': '2d', 'spacing': None}, size


def relative_path(text: str | None, column: str) -> tuple[str, str | None]:
  """A CSV's relative file path, normalised (`a/../a/x.jpg` is `a/x.jpg`: one file, one id,
  so a dotted copy of a row is found as a duplicate), and why it is refused, if it is: a
  path that leaves the dataset's folder (`..` above it, or absolute) or names nothing."""
  path = (text or '').strip()
  if not path:
    return path, f'{column}: empty'
  path = posixpath.normpath(path)
  if path.startswith(('../', '/')) or path == '..':
    return path, f"{column}: {text!r} is not below the dataset's folder"
  return path, None


def chexpert_label(value: str, column: str) -> int | None:
  value = (value or '').strip()
  if value not in CHEXPERT_VALUES:
    raise Reject(f'{column}: unknown label value {value!r} (expected 1.0, 0.0, -1.0 or blank)')
  return CHEXPERT_VALUES[value]


def pixel_box(x1: float, y1: float, x2: float, y2: float, size: tuple, where: str) -> list[float]:
  """Pixel corners -> [x1, y1, x2, y2] in [0, 1] of the image; outside or empty is a Reject."""
  w, h = size
  if not (x2 > x1 and y2 > y1):
    raise Reject(f'{where}: empty box {[x1, y1, x2, y2]}')
  tol = 1.0  # a pixel of slack: annotation tools round to the pixel edge
  if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
    raise Reject(f'{where}: box {[x1, y1, x2, y2]} outside the {w}x{h} image')
  return [min(max(x1 / w, 0.0), 1.0), min(max(y1 / h, 0.0), 1.0),
          min(max(x2 / w, 0.0), 1.0), min(max(y2 / h, 0.0), 1.0)]


def number(value: str, column: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise Reject(f'{column}: not a number: {value!r}') from None
