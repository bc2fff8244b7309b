"""VinDr-CXR builder: DICOMs written with pydicom (MONOCHROME1/2, 12/16 bit, window,
rescale, RLE-compressed) and pydicom's own test files; boxes fused per class by WBF."""
import io
import os
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from data_prep import dicom, wbf
from data_prep.builder import Reject
from tests import data_prep_fixtures as fx

HEADER = fx.txv_rows('vinbigdata-train.csv.gz', 1)[0]  # the real train.csv header
W, H = 80, 60


def ids(n):
  return [f'{i:032x}'[-32:].replace('0', 'a', 1) for i in range(1000, 1000 + n)]


def make_dicom(pixels, photometric='MONOCHROME2', bits=16, window=None, rescale=None,
               compress=False, pixel_data=True, presentation_lut=None) -> bytes:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1.1'
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset('x.dicom', {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
  ds.Modality = 'DX'
  ds.Rows, ds.Columns = pixels.shape
  ds.PhotometricInterpretation = photometric
  ds.SamplesPerPixel = 1
  ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
  ds.PixelRepresentation = 0
  ds.PixelSpacing = [0.2, 0.1]
  if window:
    ds.WindowCenter, ds.WindowWidth = window
  if rescale:
    ds.RescaleSlope, ds.RescaleIntercept = rescale
  if presentation_lut:
    ds.PresentationLUTShape = presentation_lut
  if pixel_data:
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if compress:
      ds.compress(RLELossless)
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  return buf.getvalue()


def ramp(bits=16):
  x = np.linspace(0, 2 ** bits - 1, W)
  return np.tile(x, (H, 1)).astype(np.uint16)


def png_pixels(entry):
  return np.asarray(Image.open(io.BytesIO(entry['data'])))


def test_dicom_conversion_rules():
  plain = png_pixels(dicom.read_dicom(make_dicom(ramp(12), bits=12), 'a')[0])
  assert plain.dtype == np.uint8 and plain[0, 0] == 0 and plain[0, -1] == 255
  inverted = png_pixels(dicom.read_dicom(make_dicom(ramp(12), 'MONOCHROME1', 12), 'b')[0])
  np.testing.assert_array_equal(inverted, 255 - plain)  # bone stays bright
  windowed = png_pixels(dicom.read_dicom(make_dicom(ramp(), window=(30000, 20000)), 'c')[0])
  x = ramp().astype(float)[0]
  assert (windowed[0][x < 20000] == 0).all() and (windowed[0][x > 40000] == 255).all()
  inside = (x > 21000) & (x < 39000)
  assert (np.diff(windowed[0][inside].astype(int)) >= 0).all() and len(set(windowed[0])) > 20
  rescaled = png_pixels(dicom.read_dicom(make_dicom(ramp(), rescale=(2, -1024)), 'd')[0])
  np.testing.assert_array_equal(rescaled, png_pixels(dicom.read_dicom(make_dicom(ramp()), 'e')[0]))
  rle = dicom.read_dicom(make_dicom(ramp(12), bits=12, compress=True), 'f')
  np.testing.assert_array_equal(png_pixels(rle[0]), plain)
  assert rle[1] == (W, H) and rle[2] == [0.1, 0.2]


def test_presentation_lut_shape_inverse_inverts_once():
  """A Presentation LUT Shape of INVERSE shows the lowest value white: alone on a
  MONOCHROME2 image it inverts it; with MONOCHROME1 (as DX files carry them) it is the
  same single inversion, not a second one."""
  plain = png_pixels(dicom.read_dicom(make_dicom(ramp(12), bits=12), 'a')[0])
  for photometric, shape in (('MONOCHROME2', 'INVERSE'), ('MONOCHROME1', 'INVERSE'),
                             ('MONOCHROME1', 'IDENTITY')):
    got = png_pixels(dicom.read_dicom(
        make_dicom(ramp(12), photometric, 12, presentation_lut=shape), photometric)[0])
    np.testing.assert_array_equal(got, 255 - plain)
  same = png_pixels(dicom.read_dicom(make_dicom(ramp(12), bits=12, presentation_lut='IDENTITY'),
                                     'b')[0])
  np.testing.assert_array_equal(same, plain)
  with pytest.raises(Reject, match=r'odd\.dcm: Presentation LUT Shape'):
    dicom.read_dicom(make_dicom(ramp(12), bits=12, presentation_lut='SIDEWAYS'), 'odd.dcm')


def test_compressed_dicoms_from_pydicom_decode_like_uncompressed():
  test_files = os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')

  def read(name):
    with open(os.path.join(test_files, name), 'rb') as f:
      return dicom.read_dicom(f.read(), name)

  plain = png_pixels(read('MR_small.dcm')[0])
  for lossless in ('MR_small_RLE.dcm', 'MR_small_jp2klossless.dcm',
                   'MR_small_jpeg_ls_lossless.dcm'):
    np.testing.assert_array_equal(png_pixels(read(lossless)[0]), plain)
  entry, size, _ = read('JPGExtended.dcm')  # 12-bit extended JPEG, through pylibjpeg
  assert png_pixels(entry).dtype == np.uint8 and size == (256, 1024)


def test_undecodable_pixel_data_is_one_line_naming_the_file(capfd):
  """Compressed pixel data no plugin decodes: one line (pydicom lists each plugin's
  failure on a line of its own and logs its traceback), as an upload's error shows it."""
  from pydicom.encaps import encapsulate

  from radjax.data import image_files
  ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(12), bits=12, compress=True)))
  ds.PixelData = encapsulate([b'\0' * 64])  # RLE without its segments
  buf = io.BytesIO()
  ds.save_as(buf)
  with pytest.raises(image_files.ImageFileError) as e:
    image_files.image_entry(buf.getvalue(), 'broken.dcm')
  assert str(e.value).startswith('broken.dcm: pixel data does not decode: ')
  assert 'RLE segments' in str(e.value) and '\n' not in str(e.value)
  assert 'Traceback' not in capfd.readouterr().err


def test_hostile_dicom_headers_are_one_line_naming_the_file():
  """A few-MB compressed file can claim 65535 x 65535 pixels (10 GB decoded in the web
  demo); a zero window width, a text rescale slope or frame count were tracebacks or errors
  without the file's name."""
  from pydicom.dataelem import RawDataElement
  from pydicom.tag import Tag

  from radjax.data import image_files

  def entry(**changes):
    """make_dicom's file with `changes`; bytes values go in raw, as a broken exporter writes
    them (pydicom validates the others)."""
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp())))
    for k, v in changes.items():
      if isinstance(v, bytes):
        tag = Tag(pydicom.datadict.tag_for_keyword(k))
        ds._dict[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(v), v, 0,
                                       False, True)
      else:
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()

  for changes, reason in [
      ({'Rows': 20000, 'Columns': 20000}, '20000 x 20000 pixels, over the 89,478,485'),
      ({'WindowCenter': 100, 'WindowWidth': 0}, 'its Window Center / Width'),
      ({'RescaleSlope': b'x ', 'RescaleIntercept': b'y '}, 'its Rescale Slope / Intercept'),
      ({'NumberOfFrames': b'abc '}, "NumberOfFrames 'abc'"),
      # pydicom's BytesLengthException on first use: a traceback in --mode=generate.
      ({'Columns': b'\x50\x00\x00'}, 'not a readable DICOM: Expected total bytes')]:
    with pytest.raises(image_files.ImageFileError, match=f'^bad.dcm: {reason}'):
      image_files.image_entry(entry(**changes), 'bad.dcm')
    with pytest.raises(Reject, match=f'bad.dcm: {reason}'):
      dicom.read_dicom(entry(**changes), 'bad.dcm')


def test_pixel_data_that_does_not_fit_the_header_is_named():
  """Two frames' data under a header of one (pydicom returns both) was 'degenerate pixel
  array of shape (2, H, W)'; an empty Pixel Data element was "object of type 'NoneType'
  has no len()"."""
  from radjax.data import image_files

  def with_pixel_data(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp())))
    ds.PixelData = data
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()

  one = pydicom.dcmread(io.BytesIO(make_dicom(ramp()))).PixelData
  for data, reason in [
      (one * 2, f'pixel data holds 2 frames of {H} x {W}, but NumberOfFrames is 1'),
      (b'', 'DICOM pixel data is empty')]:
    with pytest.raises(image_files.ImageFileError, match=f'^bad.dcm: {reason}'):
      image_files.image_entry(with_pixel_data(data), 'bad.dcm')
    with pytest.raises(Reject, match=f'^bad.dcm: {reason}'):
      dicom.read_dicom(with_pixel_data(data), 'bad.dcm')


def test_deflated_dicom_bomb_refused_before_it_inflates(monkeypatch):
  """Deflated Explicit VR: pydicom inflates the whole dataset before its header is read,
  so 100 MB of zero pixels (~100 KB on disk) took 100 MB before the pixel-count check;
  a real deflated file (pydicom's image_dfl.dcm) still reads."""
  from pydicom.uid import DeflatedExplicitVRLittleEndian

  from radjax.data import dicom as radjax_dicom
  from radjax.data import image_files
  test_files = os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')
  with open(os.path.join(test_files, 'image_dfl.dcm'), 'rb') as f:
    assert image_files.image_entry(f.read(), 'image_dfl.dcm')['format'] == 'png'
  pixels = np.zeros((2000, 2000), np.uint16)
  pixels[:10, :10] = 4000
  ds = pydicom.dcmread(io.BytesIO(make_dicom(pixels)))
  ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  bomb = buf.getvalue()
  assert len(bomb) < 20_000  # 8 MB of pixels
  monkeypatch.setattr(radjax_dicom, 'INFLATED_MAX_BYTES', 1 << 20)
  with pytest.raises(image_files.ImageFileError, match='^bomb.dcm: a deflated DICOM inflating '
                     'past 1,048,576 bytes'):
    image_files.image_entry(bomb, 'bomb.dcm')
  with pytest.raises(Reject, match='bomb.dcm: a deflated DICOM'):
    dicom.read_dicom(bomb, 'bomb.dcm')
  monkeypatch.setattr(radjax_dicom, 'INFLATED_MAX_BYTES', 16 << 20)
  assert image_files.image_entry(bomb, 'bomb.dcm')['format'] == 'png'


def test_wbf_fuses_per_class_above_iou():
  boxes = [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6], [0.7, 0.7, 0.9, 0.9], [0.1, 0.1, 0.5, 0.5]]
  labels = ['Cardiomegaly', 'Cardiomegaly', 'Cardiomegaly', 'Aortic enlargement']
  fused = wbf.weighted_boxes_fusion(boxes, labels, iou_thr=0.1)
  assert [(lab, n) for _, lab, n in fused] == [  # equal scores: the last box first
    ('Cardiomegaly', 1), ('Cardiomegaly', 2), ('Aortic enlargement', 1)]
  np.testing.assert_allclose(fused[1][0], [0.15, 0.15, 0.55, 0.55])
  # ensemble_boxes' order decides which two of a chain fuse (its argsort()[::-1]: with equal
  # scores the last box leads); the first-box-first order fused [.1, 0, .5, .4] instead.
  chain = wbf.weighted_boxes_fusion([[0, 0, .4, .4], [.2, 0, .6, .4], [.4, 0, .8, .4]],
                                    ['a'] * 3, iou_thr=0.3)
  assert [(np.round(b, 6).tolist(), n) for b, _, n in chain] == [([.3, 0, .7, .4], 2),
                                                               ([0, 0, .4, .4], 1)]
  # Zero-area boxes are skipped, as ensemble_boxes does (two of them never fused: IoU 0/0).
  assert wbf.weighted_boxes_fusion([[.5, .1, .5, .3], [.5, .1, .5, .3]], ['a', 'a']) == []
  # Above the threshold only: IoU of these two is 0.0526 < 0.1, so they stay apart.
  apart = wbf.weighted_boxes_fusion([[0, 0, 0.4, 0.4], [0.3, 0.3, 0.7, 0.7]], ['a', 'a'])
  assert len(apart) == 2


@pytest.fixture(scope='module')
def vindr(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('vindr_src'))
  names = ids(12)
  files = {
    names[0]: make_dicom(ramp(12), 'MONOCHROME1', 12, window=(2048, 4096)),
    names[1]: make_dicom(ramp(), rescale=(1, -1024)),
    names[2]: make_dicom(ramp(12), bits=12, compress=True),
    names[3]: make_dicom(ramp()),
    names[5]: make_dicom(ramp(), pixel_data=False),
    names[6]: make_dicom(ramp()),
    names[7]: make_dicom(ramp()),
    names[8]: make_dicom(ramp(), photometric='RGB'),
  }
  test_files = os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files')
  for i, real in ((9, 'CT_small.dcm'), (10, 'MR_small_RLE.dcm'), (11, 'MR_truncated.dcm')):
    with open(os.path.join(test_files, real), 'rb') as f:
      files[names[i]] = f.read()
  for name, data in files.items():  # names[4]: no DICOM at all
    fx.write_file(os.path.join(root, 'train', f'{name}.dicom'), data)
  rows = [
    [names[0], 'Cardiomegaly', 3, 'R8', 10, 10, 50, 40],
    [names[0], 'Cardiomegaly', 3, 'R9', 14, 12, 54, 42],
    [names[0], 'Cardiomegaly', 3, 'R10', 12, 8, 52, 44],
    [names[0], 'Nodule/Mass', 8, 'R10', 60, 5, 70, 15],
    [names[1], 'No finding', 14, 'R8', '', '', '', ''],
    [names[1], 'No finding', 14, 'R9', '', '', '', ''],
    [names[2], 'Pleural effusion', 10, 'R11', 0, 30, 40, 60],
    [names[2], 'No finding', 14, 'R12', '', '', '', ''],
    [names[3], 'Aortic enlargement', 0, 'R8', 30, 5, 45, 20],
    [names[4], 'Cardiomegaly', 3, 'R8', 10, 10, 50, 40],
    [names[5], 'No finding', 14, 'R8', '', '', '', ''],
    [names[6], 'Heart too big', 3, 'R8', 10, 10, 50, 40],
    [names[7], 'Cardiomegaly', 3, 'R8', 10, 10, 95, 40],
    [names[8], 'No finding', 14, 'R8', '', '', '', ''],
    [names[9], 'Atelectasis', 1, 'R8', 1, 2, 100, 120],
    [names[10], 'No finding', 14, 'R8', '', '', '', ''],
    [names[11], 'No finding', 14, 'R8', '', '', '', ''],
  ]
  fx.write_csv(os.path.join(root, 'train.csv'), HEADER, rows)
  path, manifest = fx.build('vindr_cxr', root, str(tmp_path_factory.mktemp('out')))
  return root, path, manifest, names


def test_examples_boxes_and_labels(vindr):
  _, path, manifest, names = vindr
  examples = {e['id']: e for e in fx.examples(path, 'train')}
  assert set(examples) == {names[i] for i in (0, 1, 2, 3, 9, 10)}
  a = examples[names[0]]
  cardio = [b for b in a['boxes'] if b['phrase'] == 'Cardiomegaly']
  assert len(cardio) == 1 and cardio[0]['label'] == 'Cardiomegaly'
  np.testing.assert_allclose(cardio[0]['box'], [12 / W, 10 / H, 52 / W, 42 / H])
  nodule = [b for b in a['boxes'] if b['phrase'] == 'Nodule/Mass']
  assert nodule[0]['label'] == 'Lung Lesion'
  assert a['labels']['Cardiomegaly'] == 1 and a['labels']['No Finding'] == 0
  assert png_pixels(a['images'][0])[0, 0] == 255  # MONOCHROME1: lowest value is white
  assert examples[names[1]]['boxes'] == [] and examples[names[1]]['labels']['No Finding'] == 1
  c = examples[names[2]]  # one reader saw an effusion, one saw nothing: the box stays
  assert [b['label'] for b in c['boxes']] == ['Pleural Effusion']
  ct = examples[names[9]]  # pydicom's CT_small.dcm: 128x128, signed, rescaled
  np.testing.assert_allclose(ct['boxes'][0]['box'], [1 / 128, 2 / 128, 100 / 128, 120 / 128])
  assert png_pixels(ct['images'][0]).shape == (128, 128)
  assert examples[names[10]]['images'][0]['format'] == 'png'


def test_planted_records_rejected(vindr):
  _, path, manifest, names = vindr
  rejects = fx.rejects(path)
  assert manifest['num_rejects'] == 6
  assert 'image file missing' in rejects[names[4]]['reason']
  assert 'no pixel data' in rejects[names[5]]['reason']
  assert "unknown class_name 'Heart too big'" in rejects[names[6]]['reason']
  assert f'outside the {W}x{H} image' in rejects[names[7]]['reason']
  assert 'PhotometricInterpretation RGB' in rejects[names[8]]['reason']
  assert names[11] in rejects  # pydicom's MR_truncated.dcm
  assert rejects[names[7]]['file'] == 'train.csv' and rejects[names[7]]['row'] == 14


def test_beam_directrunner_gives_the_same_examples(vindr, tmp_path):
  pytest.importorskip('apache_beam')
  from apache_beam.options.pipeline_options import PipelineOptions
  root, path, _, _ = vindr
  opts = PipelineOptions(['--direct_num_workers=2', '--direct_running_mode=multi_processing'])
  # FnApiRunner: what DirectRunner runs on when it does not download Prism (see
  # tests/test_beam_build.py); 2 worker processes.
  beam_path, _ = fx.build('vindr_cxr', root, str(tmp_path), beam_runner='FnApiRunner',
                          beam_options=opts)
  fx.assert_same_dataset(path, beam_path)  # record bytes, rejects.jsonl, manifest.json
  shutil.rmtree(beam_path)


def test_window_is_in_modality_units_and_monochrome1_inverts_after_it():
  """The window applies to the rescaled (modality) values, and MONOCHROME1 is inverted
  after the VOI LUT: a window that covers part of the range tells both orders apart."""
  x = ramp().astype(float)[0]  # raw 0..65535
  # Rescale 2, -1024: modality 2x - 1024; window [20000, 40000] in modality units is raw
  # [10512, 20512]; applied to raw values it would be raw [20000, 40000].
  img = png_pixels(dicom.read_dicom(make_dicom(ramp(), window=(30000, 20000),
                                               rescale=(2, -1024)), 'w')[0])[0]
  assert (img[2 * x - 1024 < 19990] == 0).all() and (img[2 * x - 1024 > 40010] == 255).all()
  assert (img[(x > 11000) & (x < 20000)] > 0).all()
  # 12-bit MONOCHROME1, window [512, 1536] of raw values: raw above 1536 is black (0)
  # after the inversion; inverted first, the window would pick raw [2559, 3583] instead.
  x12 = ramp(12).astype(float)[0]
  mono1 = png_pixels(dicom.read_dicom(make_dicom(ramp(12), 'MONOCHROME1', 12,
                                                 window=(1024, 1024)), 'm')[0])[0]
  assert (mono1[x12 > 1540] == 0).all() and (mono1[x12 < 508] == 255).all()


def test_voi_lut_sequence_of_8_bit_entries_over_a_12_bit_range():
  """A VOI LUT Sequence of 4096 8-bit entries (LUT Descriptor [4096, 0, 8]), as US or OW:
  pydicom's apply_voi_lut held the indices in uint8, so index 256 read entry 0 and the
  film came out as a saw-tooth; values past the last entry take it, not a wrapped one."""
  from pydicom.dataset import Dataset

  def with_lut(vr, descriptor, data):
    ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp(12), bits=12)))
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new(0x00283006, vr, data if vr == 'US' else np.asarray(data, '<u2').tobytes())
    ds.VOILUTSequence = [item]
    buf = io.BytesIO()
    ds.save_as(buf)
    return png_pixels(dicom.read_dicom(buf.getvalue(), 'lut.dcm')[0])[0].astype(int)

  plain = png_pixels(dicom.read_dicom(make_dicom(ramp(12), bits=12), 'a')[0])[0].astype(int)
  for vr in ('US', 'OW'):
    full = with_lut(vr, [4096, 0, 8], [i // 16 for i in range(4096)])
    assert np.abs(full - plain).max() <= 2, vr  # a linear LUT keeps the ramp
    part = with_lut(vr, [256, 1000, 8], list(range(256)))  # maps raw 1000..1255
    x = ramp(12)[0]
    assert (part[x <= 1000] == 0).all() and (part[x >= 1255] == 255).all(), vr
    assert (np.diff(part) >= 0).all(), vr


def test_pixel_spacing_wins_over_imager_pixel_spacing():
  ds = pydicom.dcmread(io.BytesIO(make_dicom(ramp())))  # PixelSpacing [0.2, 0.1] (rows, cols)
  ds.ImagerPixelSpacing = [0.3, 0.3]
  buf = io.BytesIO()
  ds.save_as(buf)
  assert dicom.read_dicom(buf.getvalue(), 'a')[2] == [0.1, 0.2]
  del ds.PixelSpacing
  buf = io.BytesIO()
  ds.save_as(buf)
  assert dicom.read_dicom(buf.getvalue(), 'b')[2] == [0.3, 0.3]


def test_wbf_threshold_is_strict_and_scores_weight_the_mean():
  # IoU exactly 0.25: not above the threshold, so two clusters (ensemble_boxes: iou > thr).
  assert len(wbf.weighted_boxes_fusion([[0, 0, 1, 1], [0, 0, .25, 1]], ['a', 'a'],
                                       iou_thr=0.25)) == 2
  (fused,) = wbf.weighted_boxes_fusion([[0, 0, .4, .4], [0, 0, .8, .8]], ['a', 'a'],
                                       scores=[3, 1])
  np.testing.assert_allclose(fused[0], [0, 0, .5, .5])


def test_vindr_fuses_readers_boxes_at_iou_above_0_1():
  from data_prep.vindr_cxr import vindr_cxr_dataset_builder as vindr_builder
  row = lambda x1, x2: {'class_name': 'Cardiomegaly', 'x_min': str(x1), 'y_min': '0',
                        'x_max': str(x2), 'y_max': '10'}
  # IoU 20 / 60 = 0.33: RadVLM's iou_thr=0.1 fuses them (0.5 would not).
  boxes = vindr_builder.fuse([(2, row(0, 40)), (3, row(20, 60))], (80, 10), 'train.csv')
  assert len(boxes) == 1
  np.testing.assert_allclose(boxes[0]['box'], [10 / 80, 0, 50 / 80, 1])
