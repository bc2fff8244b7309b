"""Volume I/O (data_prep/volumes.py): NIfTI and DICOM files shipped inside nibabel and
pydicom, series written here with pydicom, .npy; resampling, HU windows, float16 entries."""
import gzip
import io
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data_prep import volume_ops, volumes
from data_prep.builder import Reject
from radjax.data import schema

NIBABEL_DATA = Path(nib.__file__).parent / 'tests' / 'data'
PYDICOM_SERIES = Path(pydicom.data.get_testdata_file('CT_small.dcm')).parent / 'dicomdirtests'
CT_SOP_CLASS = '1.2.840.10008.5.1.4.1.1.2'


def write_slice(path, stored, *, position=(0.0, 0.0, 0.0), instance=1, series='1.2.3',
                orientation=(1, 0, 0, 0, 1, 0), spacing=(0.7, 0.5), rescale=(1, -1024),
                modality='CT', located=True, between=None):
  """One CT slice; `stored` are the raw uint16 values, `spacing` is PixelSpacing (row, col)."""
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = CT_SOP_CLASS
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID, ds.SOPInstanceUID = CT_SOP_CLASS, meta.MediaStorageSOPInstanceUID
  ds.Modality, ds.SeriesInstanceUID, ds.InstanceNumber = modality, series, instance
  ds.Rows, ds.Columns = stored.shape
  ds.PhotometricInterpretation, ds.SamplesPerPixel = 'MONOCHROME2', 1
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
  ds.PixelSpacing = list(spacing)
  ds.RescaleSlope, ds.RescaleIntercept = rescale
  if located:
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
  if between is not None:
    ds.SpacingBetweenSlices = between
  ds.PixelData = stored.astype(np.uint16).tobytes()
  ds.save_as(path, enforce_file_format=True)


def write_series(folder, stored, zs, names=None, **kw):
  """Slice k of `stored` (rows, cols, slices) at z = zs[k], file names[k]."""
  folder.mkdir(parents=True, exist_ok=True)
  names = names or [f's{k:02d}.dcm' for k in range(stored.shape[2])]
  for k, z in enumerate(zs):
    write_slice(folder / names[k], stored[..., k], position=(-40.0, -30.0, z), **kw)
  return folder


def stored_volume(shape=(10, 12, 5), seed=0):
  return np.random.default_rng(seed).integers(0, 2000, shape).astype(np.uint16)


# --- NIfTI ----------------------------------------------------------------------------

def test_nifti_from_nibabel_laid_out_as_axial_display():
  las = nib.load(NIBABEL_DATA / 'anatomical.nii')  # L-A-S: columns already run right to left
  vol = volumes.load_volume(NIBABEL_DATA / 'anatomical.nii')
  raw = np.asarray(las.dataobj, np.float32)
  np.testing.assert_array_equal(vol.array, raw.transpose(1, 0, 2)[::-1, :, :])
  assert vol.array.dtype == np.float32 and vol.spacing == (2.0, 2.0, 2.0)

  ras = nib.load(NIBABEL_DATA / 'standard.nii.gz')  # R-A-S, anisotropic 1 x 3 x 2 mm
  vol = volumes.load_volume(NIBABEL_DATA / 'standard.nii.gz')
  raw = np.asarray(ras.dataobj, np.float32)
  np.testing.assert_array_equal(vol.array, raw.transpose(1, 0, 2)[::-1, ::-1, :])
  assert vol.spacing == (1.0, 3.0, 2.0)


def test_nifti_spacing_from_the_affine_not_pixdim(tmp_path):
  # sform with 0.7 x 0.7 x 5 mm voxels, qform_code 0, pixdim left at 1: nibabel orients by
  # the sform, so the spacing must come from it too.
  data = np.random.default_rng(0).uniform(0, 100, (8, 9, 6)).astype(np.float32)
  header = nib.Nifti1Header()
  header.set_data_shape(data.shape)
  header.set_data_dtype(np.float32)
  header.set_sform(np.diag([0.7, 0.7, 5.0, 1.0]), code=1)
  header.set_qform(None, code=0)
  header['pixdim'][1:4] = 1.0
  nib.save(nib.Nifti1Image(data, None, header), tmp_path / 'sform.nii')
  assert nib.load(tmp_path / 'sform.nii').header.get_zooms() == (1.0, 1.0, 1.0)
  assert volumes.load_volume(tmp_path / 'sform.nii').spacing == (0.7, 0.7, 5.0)


def test_nifti_time_series_and_truncated_file_rejected(tmp_path):
  with pytest.raises(Reject, match=r'example4d\.nii\.gz: not a volume: 4D'):
    volumes.load_volume(NIBABEL_DATA / 'example4d.nii.gz')
  raw = gzip.decompress((NIBABEL_DATA / 'example4d.nii.gz').read_bytes())
  broken = tmp_path / 'broken.nii.gz'
  broken.write_bytes(gzip.compress(raw)[:5000])
  with pytest.raises(Reject, match=r'broken\.nii\.gz: not a readable NIfTI'):
    volumes.load_volume(broken)
  # Whole gzip, short voxel data (the header declares more): nibabel's two-line message,
  # in one line (the volume command prints it as `error: ...`).
  cut = tmp_path / 'cut.nii'
  cut.write_bytes((NIBABEL_DATA / 'anatomical.nii').read_bytes()[:30000])
  with pytest.raises(Reject, match=r'cut\.nii: not a readable NIfTI: Expected \d+ bytes') as e:
    volumes.load_volume(cut)
  assert '\n' not in str(e.value)
  # A 3D scan stored with trailing unit dimensions (x, y, z, 1, 1) is a volume.
  data = stored_volume((8, 9, 6)).astype(np.float32)
  nib.save(nib.Nifti1Image(data[..., None, None], np.eye(4)), tmp_path / 'five.nii')
  assert volumes.load_volume(tmp_path / 'five.nii').array.shape == (9, 8, 6)


def test_axial_series_and_its_nifti_give_the_same_volume(tmp_path):
  stored = stored_volume()
  sx, sy, sz, x0, y0, z0 = 0.5, 0.7, 2.5, -40.0, -30.0, 12.0
  series = write_series(tmp_path / 'ct', stored, [z0 + k * sz for k in range(5)])
  # The same scan as a NIfTI: voxel (i=col, j=row, k) at LPS (x0 + i sx, y0 + j sy, ...),
  # and RAS negates x and y.
  affine = np.array([[-sx, 0, 0, -x0], [0, -sy, 0, -y0], [0, 0, sz, z0], [0, 0, 0, 1]])
  hu = stored.astype(np.int16) - 1024
  nib.save(nib.Nifti1Image(hu.transpose(1, 0, 2), affine), tmp_path / 'ct.nii.gz')
  from_dicom = volumes.load_volume(series)
  from_nifti = volumes.load_volume(tmp_path / 'ct.nii.gz')
  np.testing.assert_array_equal(from_dicom.array, hu)
  np.testing.assert_array_equal(from_nifti.array, from_dicom.array)
  np.testing.assert_allclose(from_nifti.spacing, (sx, sy, sz), rtol=1e-6)
  np.testing.assert_allclose(from_dicom.spacing, (sx, sy, sz), rtol=1e-6)
  assert from_dicom.modality == 'CT'


# --- DICOM series ---------------------------------------------------------------------

def test_real_ct_series_from_pydicom_sorted_by_position():
  folder = PYDICOM_SERIES / '98892001' / 'CT5N'  # 5 slices, file names run top to bottom
  vol = volumes.load_volume(folder)
  slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
  slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
  expected = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                       for ds in slices], axis=-1)
  np.testing.assert_array_equal(vol.array, expected)
  assert not np.array_equal(vol.array[..., 0], vol.array[..., -1])  # the order is visible
  np.testing.assert_allclose(vol.spacing, (0.488281, 0.488281, 2.5), rtol=1e-6)
  assert vol.array.min() < -500  # HU: the intercept was applied


def test_real_series_with_missing_slices_rejected():
  with pytest.raises(Reject, match=r'CT2: uneven slice spacing: 17106 -> 17136 is 202\.500 mm'):
    volumes.load_volume(PYDICOM_SERIES / '77654033' / 'CT2')


def test_written_series_unsorted_files_with_rescale(tmp_path):
  stored = stored_volume((9, 11, 4), seed=1)
  zs = [7.5, 2.5, 10.0, 5.0]  # slice k of `stored` at zs[k]; names and numbers scrambled
  folder = write_series(tmp_path / 's', stored, zs, names=['a', 'd', 'b', 'c'],
                        rescale=(2, -1024), spacing=(0.8, 0.6))
  vol = volumes.load_volume(folder)
  order = np.argsort(zs)
  np.testing.assert_array_equal(vol.array, stored[..., order].astype(np.float32) * 2 - 1024)
  np.testing.assert_allclose(vol.spacing, (0.6, 0.8, 2.5))


def test_coronal_series_sorted_along_its_normal(tmp_path):
  stored = stored_volume((8, 8, 3), seed=2)
  folder = tmp_path / 'cor'
  folder.mkdir()
  ys = [4.0, -2.0, 1.0]  # rows along x, columns along -z: the normal is +y
  for k, y in enumerate(ys):
    write_slice(folder / f'{k}.dcm', stored[..., k], position=(0.0, y, 50.0),
                orientation=(1, 0, 0, 0, 0, -1))
  vol = volumes.load_volume(folder)
  # Sorted: rows run inferior, columns left, slices posterior; displayed as an axial series:
  # rows anterior to posterior (the slices), columns right to left, slices inferior up.
  stack = stored[..., np.argsort(ys)] - 1024.0
  np.testing.assert_array_equal(vol.array, stack.transpose(2, 1, 0)[:, :, ::-1])
  assert vol.spacing == pytest.approx((0.5, 3.0, 0.7))


@pytest.mark.parametrize('along_row, down_column', [
    ((1, 0, 0), (0, 1, 0)),  # axial, supine
    ((-1, 0, 0), (0, -1, 0)),  # axial, prone: the patient's right on the image's right
    ((1, 0, 0), (0, 0, -1)),  # coronal
    ((0, 1, 0), (0, 0, -1)),  # sagittal
])
def test_a_series_in_any_orientation_is_laid_out_as_axial_display(tmp_path, along_row,
                                                                 down_column):
  """An 8 x 9 x 10 mm grid of patient space (LPS), voxel (x, y, z) holding 100 x + 10 y + z,
  scanned in each orientation: the volume is the grid with rows anterior to posterior (y),
  columns patient right to left (x), slices inferior to superior (z), as its NIfTI gives
  (a prone series came out mirrored left-right and front-back)."""
  extent = np.array([8, 9, 10])
  x_dir, y_dir = np.array(along_row), np.array(down_column)
  normal = np.cross(x_dir, y_dir)
  size = [int(abs(d) @ extent) for d in (y_dir, x_dir, normal)]  # rows, columns, slices
  corner = np.array([(e - 1) * (d < 0).any() for e, d in zip(
      extent, np.stack([x_dir, y_dir, normal], 1))])  # each axis starts where it runs from
  folder = tmp_path / 'series'
  folder.mkdir()
  for k in range(size[2]):
    origin = corner + k * normal
    i, j = np.meshgrid(np.arange(size[0]), np.arange(size[1]), indexing='ij')
    p = origin + j[..., None] * x_dir + i[..., None] * y_dir
    stored = 100 * p[..., 0] + 10 * p[..., 1] + p[..., 2] + 1024
    write_slice(folder / f'{size[2] - k:02d}.dcm', stored, position=tuple(map(float, origin)),
                orientation=tuple(along_row) + tuple(down_column), spacing=(1.0, 1.0),
                instance=size[2] - k)
  vol = volumes.load_volume(folder)
  r, c, s = np.meshgrid(*(np.arange(n) for n in (9, 8, 10)), indexing='ij')
  np.testing.assert_array_equal(vol.array, 100 * c + 10 * r + s)
  assert vol.spacing == (1.0, 1.0, 1.0)


def test_corrupt_slices_named(tmp_path):
  folder = write_series(tmp_path / 'garbage', stored_volume(), [0, 1, 2, 3, 4])
  (folder / 's02.dcm').write_bytes(b'not a dicom at all' * 10)
  with pytest.raises(Reject, match=r'garbage: slice s02\.dcm: not a readable DICOM'):
    volumes.load_volume(folder)
  folder = write_series(tmp_path / 'cut', stored_volume(), [0, 1, 2, 3, 4])
  data = (folder / 's03.dcm').read_bytes()
  (folder / 's03.dcm').write_bytes(data[:-60])
  with pytest.raises(Reject, match=r'cut: slice s03\.dcm: pixel data does not decode'):
    volumes.load_volume(folder)
  # No Rows on any slice (so none differs from the first): a Reject naming the slice, not
  # an AttributeError from sizing the stack (a traceback from the volume command).
  folder = write_series(tmp_path / 'sizeless', stored_volume(), [0, 1, 2, 3, 4])
  for path in folder.iterdir():
    ds = pydicom.dcmread(path)
    del ds.Rows
    ds.save_as(path)
  with pytest.raises(Reject, match=r'sizeless: slice s00\.dcm: no Rows \(the image size\)'):
    volumes.load_volume(folder)
  # A frame count that is no number, as a broken exporter writes it: named, not int()'s
  # ValueError.
  folder = write_series(tmp_path / 'frames', stored_volume(), [0, 1, 2, 3, 4])
  ds = pydicom.dcmread(folder / 's02.dcm')
  tag = pydicom.tag.Tag('NumberOfFrames')
  ds._dict[tag] = pydicom.dataelem.RawDataElement(tag, 'IS', 4, b'abc ', 0, False, True)
  ds.save_as(folder / 's02.dcm')
  with pytest.raises(Reject, match=r"frames: slice s02\.dcm: NumberOfFrames 'abc' is not a"):
    volumes.load_volume(folder)


@pytest.mark.parametrize('rescale', [('inf', 0), ('nan', 0), (1, 'inf')])
def test_a_non_finite_rescale_is_named_with_its_slice(tmp_path, rescale):
  """It was 'non-finite voxels' of the folder (a series) or a 'blank image' (a radiograph)."""
  from radjax.data import dicom as dicom_lib
  series = write_series(tmp_path / 'ct', stored_volume(), [2.5 * k for k in range(5)],
                        rescale=rescale)
  said = 'non-finite values (NaN or inf) after the modality LUT (Rescale Slope'
  with pytest.raises(Reject, match=f'ct: slice s00.dcm: {re.escape(said)}'):
    volumes.load_volume(series)
  path = series / 's00.dcm'
  with pytest.raises(schema.SchemaError, match=f's00.dcm: {re.escape(said)}'):
    dicom_lib.to_uint8(dicom_lib.read_dataset(path.read_bytes(), str(path)), str(path))


def test_inconsistent_series_rejected(tmp_path):
  folder = write_series(tmp_path / 'gap', stored_volume(), [0, 2, 4, 8, 10])
  with pytest.raises(Reject, match=r'uneven slice spacing: s02\.dcm -> s03\.dcm is 4\.000 mm, '
                                   r'the series steps 2\.000 mm'):
    volumes.load_volume(folder)
  folder = write_series(tmp_path / 'dup', stored_volume(), [0, 2, 4, 4, 6])
  with pytest.raises(Reject, match=r'slices s02\.dcm and s03\.dcm share position 4\.000'):
    volumes.load_volume(folder)
  folder = write_series(tmp_path / 'size', stored_volume(), [0, 1, 2, 3, 4])
  write_slice(folder / 's04.dcm', stored_volume((10, 10, 1))[..., 0], position=(-40, -30, 4))
  with pytest.raises(Reject, match=r'size: slice s04\.dcm: Columns 10 differs from 12 in s00'):
    volumes.load_volume(folder)
  folder = write_series(tmp_path / 'mixed', stored_volume(), [0, 1, 2, 3, 4])
  write_slice(folder / 's01.dcm', stored_volume()[..., 0], position=(-40, -30, 1), series='9.9')
  with pytest.raises(Reject, match=r'mixed: slice s01\.dcm: SeriesInstanceUID 9\.9 differs'):
    volumes.load_volume(folder)
  folder = write_series(tmp_path / 'one', stored_volume((10, 12, 1)), [0])
  with pytest.raises(Reject, match=r'one: 1 slice, not a volume'):
    volumes.load_volume(folder)


def test_series_without_positions_ordered_by_instance_number(tmp_path, caplog):
  stored = stored_volume((8, 9, 3), seed=3)
  folder = tmp_path / 'nopos'
  folder.mkdir()
  numbers = [3, 1, 2]
  for k, n in enumerate(numbers):
    write_slice(folder / f'{k}.dcm', stored[..., k], instance=n, located=False, between=3.0)
  with caplog.at_level(logging.WARNING):
    vol = volumes.load_volume(folder)
  assert 'ordered by InstanceNumber' in caplog.text
  np.testing.assert_array_equal(vol.array, stored[..., np.argsort(numbers)] - 1024.0)
  assert vol.spacing == (0.5, 0.7, 3.0)


@pytest.mark.parametrize('position', [None, (0.0, float('nan'), 3.0)])
def test_a_slice_without_a_usable_position_among_positioned_ones_is_named(tmp_path, position):
  """Ordering all by InstanceNumber because one slice lacks its position (or has a NaN)
  could flip the series head to foot; the slice is named instead."""
  stored = stored_volume((8, 9, 4), seed=4)
  folder = write_series(tmp_path / 'ct', stored, [0.0, 3.0, 6.0, 9.0])
  ds = pydicom.dcmread(folder / 's02.dcm')
  if position is None:
    del ds.ImagePositionPatient
  else:
    ds.ImagePositionPatient = list(position)
  ds.save_as(folder / 's02.dcm')
  with pytest.raises(volumes.Reject, match=r'slice s02.dcm: no usable ImagePositionPatient'):
    volumes.load_volume(folder)


def test_a_negative_spacing_between_slices_is_its_size(tmp_path):
  stored = stored_volume((8, 9, 3), seed=5)
  folder = tmp_path / 'nopos'
  folder.mkdir()
  for k in range(3):
    write_slice(folder / f'{k}.dcm', stored[..., k], instance=k + 1, located=False,
                between=-2.0)
  assert volumes.load_volume(folder).spacing == (0.5, 0.7, 2.0)


# --- .npy -----------------------------------------------------------------------------

def test_npy_volumes(tmp_path):
  array = np.random.default_rng(4).normal(size=(6, 7, 5)).astype(np.float32)
  np.save(tmp_path / 'v.npy', array)
  vol = volumes.load_volume(tmp_path / 'v.npy', spacing=[1, 1, 3])
  np.testing.assert_array_equal(vol.array, array)
  assert vol.spacing == (1.0, 1.0, 3.0)
  np.save(tmp_path / 'obj.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(Reject, match=r'obj\.npy: not a plain numeric \.npy'):
    volumes.load_volume(tmp_path / 'obj.npy')
  (tmp_path / 'junk.npy').write_bytes(b'xx')  # no header: not blamed on pickle
  with pytest.raises(Reject, match=r'junk\.npy: not a \.npy file \(no NumPy header\)'):
    volumes.load_volume(tmp_path / 'junk.npy')
  np.save(tmp_path / 'flat.npy', array[..., 0])
  with pytest.raises(Reject, match=r'flat\.npy: not a volume: array of shape \(6, 7\)'):
    volumes.load_volume(tmp_path / 'flat.npy')
  with pytest.raises(Reject, match=r'scan\.mha: unknown volume format'):
    (tmp_path / 'scan.mha').write_bytes(b'x')
    volumes.load_volume(tmp_path / 'scan.mha')


# --- resampling, windows, entries ----------------------------------------------------

def test_resample_keeps_physical_size():
  vol = volume_ops.Volume(np.zeros((37, 29, 11), np.float32), (0.73, 0.61, 2.5), 'v')
  for target in [(1.0, 1.0, 1.0), (0.5, 2.0, 3.3), (1.5, 1.5, 5.0)]:
    out = volume_ops.resample(vol, target)
    before = np.array(vol.array.shape) * volume_ops.axis_spacing(vol.spacing)
    after = np.array(out.array.shape) * volume_ops.axis_spacing(out.spacing)
    np.testing.assert_allclose(after, before, rtol=1e-12)
    # each axis within half a voxel of the target
    assert np.all(np.abs(after / volume_ops.axis_spacing(target) - out.array.shape) <= 0.5)


def test_a_non_finite_target_spacing_or_window_is_refused():
  """inf mm shrank its axis to one voxel without a word; NaN failed in numpy ('negative
  dimensions'); a non-finite window made every voxel NaN."""
  vol = volume_ops.Volume(np.random.default_rng(0).random((8, 8, 8), np.float32),
                          (1.0, 1.0, 1.0), 'v')
  for bad in (float('inf'), float('nan')):
    with pytest.raises(ValueError, match='target spacing must be 3 finite positive'):
      volume_ops.resample(vol, (bad, 1.0, 1.0))
    with pytest.raises(ValueError, match='must be finite'):
      volume_ops.window(vol.array, bad, 400.0)
    with pytest.raises(ValueError, match='must be finite'):
      volume_ops.window(vol.array, 40.0, bad)


def test_the_volume_command_refuses_a_non_finite_spacing(tmp_path, capsys):
  from data_prep.__main__ import main
  series = write_series(tmp_path / 'ct', stored_volume(), [2.5 * k for k in range(5)])
  for spacing in ('inf,1,1', 'nan,1,1'):
    assert main(['volume', str(series), str(tmp_path / 'x.npy'), '--spacing', spacing]) == 2
    assert 'each finite' in capsys.readouterr().err


def test_resample_exact_for_integer_factors():
  pattern = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3) ** 1.5  # not linear
  vol = volume_ops.Volume(pattern, (1.0, 1.0, 2.0), 'v')
  up = volume_ops.resample(vol, (0.5, 1.0, 1.0), order=0)  # x2 columns, x2 slices
  np.testing.assert_array_equal(up.array, np.repeat(np.repeat(pattern, 2, axis=1), 2, axis=2))
  assert up.spacing == (0.5, 1.0, 1.0)
  down = volume_ops.resample(vol, (2.0, 2.0, 2.0), order=1)  # halve rows and columns
  np.testing.assert_allclose(down.array, pattern.reshape(2, 2, 3, 2, 3).mean(axis=(1, 3)),
                             rtol=1e-6)
  # A one-voxel checkerboard shrunk by 3 aliases to single voxels; antialiasing greys it.
  board = (np.indices((12, 12, 2)).sum(axis=0) % 2).astype(np.float32)
  vol = volume_ops.Volume(board, (1.0, 1.0, 1.0), 'b')
  assert np.ptp(volume_ops.resample(vol, (3.0, 3.0, 1.0)).array) == 1.0
  smooth = volume_ops.resample(vol, (3.0, 3.0, 1.0), antialias=True).array
  assert np.ptp(smooth[1:-1, 1:-1]) < 0.2


def test_windows_by_hand():
  hu = np.array([-2000, -1350, -1000, -600, 0, 150, 400], np.float32)
  np.testing.assert_allclose(volume_ops.window(hu, *volume_ops.WINDOWS['lung']),
                             [0, 0, 350 / 1500, 0.5, 0.9, 1, 1], atol=1e-7)
  np.testing.assert_allclose(volume_ops.window(hu, *volume_ops.WINDOWS['mediastinum']),
                             [0, 0, 0, 0, 0.4, 310 / 400, 1], atol=1e-7)
  vol = volume_ops.Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 5, None, 'v')
  scaled = volume_ops.rescale_range(vol)
  assert scaled.min() == 0 and scaled.max() == 1 and scaled[0, 0, 1] == pytest.approx(1 / 23)
  with pytest.raises(Reject, match='v: constant volume'):
    volume_ops.rescale_range(volume_ops.Volume(np.ones((2, 2, 2), np.float32), None, 'v'))
  mr = volume_ops.Volume(hu.reshape(1, 7, 1).repeat(2, 0).repeat(2, 2), (1, 1, 1), 'mr', 'MR')
  with pytest.raises(Reject, match='mr: a MR volume has no Hounsfield units'):
    volumes.prepare(mr, window_hu='lung')


def test_a_ct_window_on_a_normalised_volume_is_refused(tmp_path, capsys):
  """`python -m data_prep volume x.npy out.npy --window lung` on a volume stored in [0, 1]
  (as the datasets keep them) wrote one grey value everywhere (0.9: 'HU' 0 to 1 all sit
  in the lung window's bright end), exit 0."""
  from data_prep.__main__ import main
  stored = tmp_path / 'scan.npy'
  np.save(stored, np.random.default_rng(0).random((8, 8, 4)).astype(np.float16))
  assert main(['volume', str(stored), str(tmp_path / 'out.npy'), '--window', 'lung']) == 2
  assert 'normalised already' in capsys.readouterr().err
  assert main(['volume', str(stored), str(tmp_path / 'out.npy')]) == 0  # min-max is fine


def test_float16_entry_round_trip_through_schema(tmp_path):
  stored = stored_volume((10, 12, 4), seed=5)
  vol = volumes.load_volume(write_series(tmp_path / 'ct', stored, [0, 2, 4, 6]))
  entry = volumes.prepare(vol, target_spacing=(1.0, 1.4, 2.0), window_hu=(-600, 1500))
  example = schema.make_example(
    id='ct-1', source='radfm', images=[entry],
    conversation=[{'role': 'user', 'text': 'Findings?'}, {'role': 'assistant', 'text': 'None.'}])
  schema.validate(example)
  decoded = schema.decode(schema.encode(example))['images'][0]
  array = np.load(io.BytesIO(decoded['data']), allow_pickle=False)
  expected = volume_ops.window(volume_ops.resample(vol, (1.0, 1.4, 2.0)).array, -600, 1500)
  assert array.dtype == np.float16 and array.shape == (5, 6, 4) == expected.shape
  np.testing.assert_array_equal(array, expected.astype(np.float16))
  assert np.abs(array.astype(np.float32) - expected).max() <= 2.0 ** -11
  assert decoded['format'] == 'npy' and decoded['kind'] == '3d'
  assert decoded['spacing'] == [1.0, 1.4, 2.0]


def test_convert_volumes_rejects_bad_inputs_and_converts_the_rest(tmp_path):
  good_series = write_series(tmp_path / 'good', stored_volume(), [0, 1, 2, 3, 4])
  bad_series = write_series(tmp_path / 'bad', stored_volume(), [0, 1, 2, 3, 4])
  (bad_series / 's01.dcm').write_bytes(b'')
  np.save(tmp_path / 'flat.npy', np.zeros((4, 4), np.float32))
  broken = tmp_path / 'broken.nii'
  broken.write_bytes((NIBABEL_DATA / 'anatomical.nii').read_bytes()[:400])
  paths = [NIBABEL_DATA / 'anatomical.nii', bad_series, good_series, tmp_path / 'flat.npy',
           tmp_path / 'missing.nii.gz', broken]
  converted, rejects = volumes.convert_volumes(paths, percentiles=(0.5, 99.5))
  assert [p for p, _ in converted] == [paths[0], good_series]
  for _, entry in converted:
    assert entry['kind'] == '3d' and np.load(io.BytesIO(entry['data'])).dtype == np.float16
  assert [r['row'] for r in rejects] == [1, 3, 4, 5]
  assert 'bad: slice s01.dcm: empty file' in rejects[0]['reason']
  assert 'flat.npy: not a volume' in rejects[1]['reason']
  assert 'missing.nii.gz: no such file' in rejects[2]['reason']
  assert 'broken.nii: not a readable NIfTI' in rejects[3]['reason']
  assert all(r['file'] == str(paths[r['row']]) for r in rejects)


def test_a_nifti_header_claiming_a_huge_volume_is_refused_before_reading(tmp_path):
  """10000^3 voxels in a 352-byte header: nibabel's bare MemoryError had no words."""
  header = nib.Nifti1Header()
  header.set_data_shape((10000, 10000, 10000))
  header.set_data_dtype(np.uint8)
  path = tmp_path / 'huge.nii'
  path.write_bytes(header.binaryblock + b'\0' * 4)
  with pytest.raises(Reject, match=r'huge\.nii: a NIfTI of shape \(10000, 10000, 10000\), over'):
    volumes.load_volume(path)


def test_series_npy_and_resampling_over_the_voxel_limit_are_refused_first(tmp_path,
                                                                          monkeypatch):
  """Only a NIfTI header was checked: a 2.6 MB compressed DICOM series of 8192^2 slices
  ran out of memory, a 4 GB .npy was read whole, --spacing could ask for 23 GiB."""
  monkeypatch.setattr(volume_ops, 'MAX_VOXELS', 500)
  write_series(tmp_path / 'ct', stored_volume((10, 12, 5)), [0, 2, 4, 6, 8])  # 600 voxels
  with pytest.raises(Reject, match=r'ct: a series of shape \(10, 12, 5\), over the 500'):
    volumes.load_volume(tmp_path / 'ct')
  np.save(tmp_path / 'big.npy', np.zeros((10, 10, 6), np.float32))
  with pytest.raises(Reject, match=r'big\.npy: a \.npy of shape \(10, 10, 6\), over'):
    volumes.load_volume(tmp_path / 'big.npy')
  small = volume_ops.Volume(np.zeros((6, 6, 6), np.float32), (1.0, 1.0, 1.0), 'v.npy')
  with pytest.raises(Reject, match=r'v\.npy: resampled to \[0\.5, 0\.5, 0\.5\] mm, a volume '
                                   r'of shape \(12, 12, 12\)'):
    volume_ops.resample(small, (0.5, 0.5, 0.5))


def test_min_max_rescale_stays_float32():
  """numpy's float64 percentile bounds promoted a whole CT to float64 (1.6 GB at 512^2 x 400)."""
  x = np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32) * 1000
  out = volume_ops.rescale_range(volume_ops.Volume(x, None, 'v'))
  assert out.dtype == np.float32 and out.min() == 0 and out.max() == 1
  np.testing.assert_allclose(out, (x - x.min()) / (x.max() - x.min()), atol=1e-6)


def test_the_volume_command_writes_what_generate_reads(tmp_path, capsys):
  """`python -m data_prep volume` (the NIfTI / multi-frame advice of --images points at
  it): a series folder -> the float16 [0, 1] .npy a 3D model's --images reads, min-max as
  RadFM's loader, or through a CT window; bad arguments are one line, exit 2."""
  from data_prep.__main__ import main
  from radjax.data import image_files
  stored = stored_volume()
  series = write_series(tmp_path / 'ct', stored, [2.5 * k for k in range(5)])
  out = str(tmp_path / 'scan.npy')
  assert main(['volume', str(series), out]) == 0
  array = np.load(out)
  hu = stored.astype(np.float32) - 1024
  assert array.dtype == np.float16 and array.shape == (10, 12, 5)
  np.testing.assert_allclose(array, (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-3)
  assert image_files.read_entry(out)['kind'] == '3d'
  assert main(['volume', str(series), out, '--window', 'lung', '--spacing', '1,1,5']) == 0
  assert np.load(out).shape == (7, 6, 2)  # 7 x 6 x 12.5 mm
  for bad, said in ((['--spacing', '1,1'], 'three positive mm'),
                    (['--window', 'liver'], "unknown window 'liver'")):
    assert main(['volume', str(series), out] + bad) == 2
    assert said in capsys.readouterr().err
  assert main(['volume', str(tmp_path / 'nothing'), out]) == 2
  assert 'no such file or folder' in capsys.readouterr().err
  # The output the input itself: the raw scan was replaced by the normalised copy.
  raw = tmp_path / 'raw.npy'
  np.save(raw, hu.astype(np.int16))
  before = raw.read_bytes()
  assert main(['volume', str(raw), str(raw)]) == 2
  assert 'out ' + str(raw) + ' is the same file as source' in capsys.readouterr().err
  assert raw.read_bytes() == before
