"""Conversion throughput of the data_prep builders, local and on Beam (images/s per core).

  python bench/data_prep_throughput.py [--n_jpeg 2000] [--n_dicom 100] [--beam]

Writes synthetic sets in the publishers' layouts into a temp dir (CheXpert-v1.0-small
JPEGs at 320x390; VinDr-CXR 12-bit MONOCHROME1 DICOMs at 2048x2048 with a window), builds
each with
`data_prep.build`, and prints images/s and images/s per core (local: one process;
Beam DirectRunner: --direct_num_workers processes). Beam needs launch/beam_venv.sh.
"""
import argparse
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import build as build_lib  # noqa: E402
from tests import data_prep_fixtures as fx  # noqa: E402
from tests.test_data_prep_vindr import make_dicom  # noqa: E402


def chexpert(root, n):
  header, rows = fx.txv_rows('chexpert_train.csv.gz', n)
  rng = np.random.default_rng(0)
  base = (rng.normal(128, 40, (390, 320))).clip(0, 255).astype(np.uint8)
  for i, r in enumerate(rows):
    buf = io.BytesIO()
    Image.fromarray(np.roll(base, i, 0)).save(buf, format='JPEG', quality=90)
    fx.write_file(os.path.join(root, r[0]), buf.getvalue())
  fx.write_csv(os.path.join(root, 'CheXpert-v1.0-small/train.csv'), header, rows)
  return len(rows)


def vindr(root, n, side):
  # Smooth anatomy-like field plus quantum noise: PNG cost depends on the content, and
  # pure noise would be a worst case no radiograph has.
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:side, 0:side] / side
  field = 2000 + 1200 * np.sin(6 * x) * np.cos(5 * y) + rng.normal(0, 40, (side, side))
  pixels = field.clip(0, 4095).astype(np.uint16)
  rows = []
  for i in range(n):
    image_id = f'{i:032x}'
    fx.write_file(os.path.join(root, 'train', f'{image_id}.dicom'),
                  make_dicom(np.roll(pixels, i, 0), 'MONOCHROME1', 12, window=(2048, 4096)))
    # Two readers' boxes, as at 1024 px (100-900 x 100-800), scaled to the film's side.
    rows.append([image_id, 'Cardiomegaly', 3, 'R8',
                 *(round(v * side / 1024) for v in (100, 100, 900, 800))])
    rows.append([image_id, 'Cardiomegaly', 3, 'R9',
                 *(round(v * side / 1024) for v in (110, 90, 920, 810))])
  fx.write_csv(os.path.join(root, 'train.csv'), fx.txv_rows('vinbigdata-train.csv.gz', 1)[0],
               rows)
  return n


def timed(name, src, out, n, **kwargs):
  start = time.perf_counter()
  build_lib.build(name, out, manual_dir=src, **kwargs)
  return n / (time.perf_counter() - start)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--n_jpeg', type=int, default=2000)
  p.add_argument('--n_dicom', type=int, default=100)
  p.add_argument('--dicom_side', type=int, default=2048)
  p.add_argument('--beam', action='store_true')
  p.add_argument('--workers', type=int, default=2)
  args = p.parse_args()
  tmp = tempfile.mkdtemp(prefix='radjax-bench-')
  try:
    sets = {'chexpert': chexpert(os.path.join(tmp, 'cx'), args.n_jpeg),
            'vindr_cxr': vindr(os.path.join(tmp, 'vd'), args.n_dicom, args.dicom_side)}
    srcs = {'chexpert': os.path.join(tmp, 'cx'), 'vindr_cxr': os.path.join(tmp, 'vd')}
    for name, n in sets.items():
      rate = timed(name, srcs[name], os.path.join(tmp, 'local'), n)
      print(f'{name:10s} local  {n:5d} images  {rate:7.1f} images/s  {rate:7.1f} /s/core')
      if args.beam:
        from apache_beam.options.pipeline_options import PipelineOptions
        opts = PipelineOptions([f'--direct_num_workers={args.workers}',
                                '--direct_running_mode=multi_processing'])
        rate = timed(name, srcs[name], os.path.join(tmp, 'beam'), n,
                     beam_runner='DirectRunner', beam_options=opts)
        print(f'{name:10s} beam   {n:5d} images  {rate:7.1f} images/s  '
              f'{rate / args.workers:7.1f} /s/core ({args.workers} workers)')
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
  main()
