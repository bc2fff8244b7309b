"""Build a dataset from its publisher's files, or show what a build wrote.

  python -m data_prep build <name> --manual_dir SRC --data_dir OUT [--beam_runner R] \
      [--max_short_side 512]
  python -m data_prep show <dataset dir> [--split S] [--limit N]
  python -m data_prep volume <DICOM series folder | .nii[.gz]> OUT.npy [--window lung] \
      [--spacing 1,1,2]

`build` writes `OUT/<name>/[<config>/]<version>/` (point config.data.dir there) and
prints its summary (counts, the records it leaves out by design, such as a `frontal`
config's other views, and rejects); a finished build is reused. `show` prints one JSON
object per Example, images as format, mode and size
(a volume: shape and dtype), never their bytes. `volume` writes one scan as the datasets
store it (float16 [rows, cols, slices] in [0, 1], data_prep/volumes.py), what
`main.py --mode=generate --images OUT.npy` gives a 3D model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from data_prep import build as build_lib
from data_prep import builder as builder_lib
from radjax.core import arg_types, files


def _parse(argv):
  parser = argparse.ArgumentParser(prog='python -m data_prep', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  b = sub.add_parser('build', help='build a dataset')
  b.add_argument('name', help=', '.join(build_lib.NAMES))
  b.add_argument('--manual_dir', default=None,
                 help="folder the publisher's archives were extracted into")
  b.add_argument('--data_dir', required=True, help='where datasets are written')
  b.add_argument('--config', default=None, help="builder config, e.g. mimic_cxr's 'frontal'")
  b.add_argument('--beam_runner', default=None,
                 help='run on Apache Beam, e.g. DirectRunner or FnApiRunner (local; '
                 'DirectRunner tries to download Prism first) (needs launch/beam_venv.sh)')
  b.add_argument('--beam_options', default=None,
                 help="Beam pipeline flags, e.g. '--direct_num_workers=2 "
                 "--direct_running_mode=multi_processing'")
  b.add_argument('--num_shards', type=arg_types.int_at_least(1), default=None,
                 help='shards per split (at most one per record)')
  b.add_argument('--max_short_side', type=int, default=None,
                 help='store 2D images downscaled so their shorter side is at most this '
                 '(e.g. 512 for 224-384 px models); default: the files as published')
  s = sub.add_parser('show', help='print the Examples of a built dataset')
  s.add_argument('dataset_dir')
  s.add_argument('--split', default='train')
  s.add_argument('--limit', type=arg_types.int_at_least(0), default=None,
                 help='print at most this many Examples')
  v = sub.add_parser('volume', help='convert one scan to the .npy volume a 3D model reads')
  v.add_argument('source', help='a DICOM series folder (single-frame slices) or a NIfTI file')
  v.add_argument('out', help='the .npy file to write')
  v.add_argument('--window', default=None,
                 help='CT window to [0, 1] (lung, mediastinum, bone, brain); default: '
                 "min-max of the scan, as RadFM's loader")
  v.add_argument('--spacing', default=None,
                 help='resample to this spacing in mm, sx,sy,sz (default: as acquired)')
  return parser.parse_args(argv)


def _volume(args) -> int:
  from data_prep import volumes
  try:
    spacing = None if args.spacing is None else [float(x) for x in args.spacing.split(',')]
    if spacing is not None and (len(spacing) != 3 or
                                not all(math.isfinite(s) and s > 0 for s in spacing)):
      raise ValueError(f'--spacing {args.spacing!r}: expected three positive mm, sx,sy,sz, '
                       'each finite')
    if not args.out.endswith('.npy'):
      raise ValueError(f'{args.out}: the output is a .npy file')
    files.check_outputs_apart({'out': args.out}, {'source': args.source})
    entry = volumes.prepare(volumes.load_volume(args.source), target_spacing=spacing,
                            window_hu=args.window)
    with open(args.out, 'wb') as f:
      f.write(entry['data'])
  except (OSError, ValueError) as e:  # Reject is a ValueError: one line, exit 2
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps({'out': args.out, 'shape': list(np.load(args.out).shape),
                    'spacing': entry['spacing']}))
  return 0


def main(argv=None) -> int:
  args = _parse(argv)
  if args.command == 'volume':
    return _volume(args)
  if args.command == 'show':
    from data_prep import show
    try:
      show.show(args.dataset_dir, args.split, args.limit, sys.stdout)
    except (OSError, ValueError) as e:  # a bad path or input: one line, exit 2
      print(f'error: {e}', file=sys.stderr)
      return 2
    return 0
  try:
    build_lib.check_beam(args.beam_runner, args.beam_options)
    beam_options = None
    if args.beam_options:
      from apache_beam.options.pipeline_options import PipelineOptions
      beam_options = PipelineOptions(args.beam_options.split())
    path = build_lib.build(args.name, args.data_dir, manual_dir=args.manual_dir,
                           config=args.config, beam_runner=args.beam_runner,
                           beam_options=beam_options, num_shards=args.num_shards,
                           max_short_side=args.max_short_side)
  except (OSError, ValueError) as e:  # a bad path or input: one line, exit 2
    message = str(e)
    if isinstance(e, builder_lib.ManualDirError):  # the files are not as downloaded
      instructions = build_lib.builder_class(args.name).MANUAL_DOWNLOAD_INSTRUCTIONS or ''
      if instructions.strip() and instructions.strip() not in message:
        message = f'{message}\n{instructions.strip()}'
    print(f'error: {message}', file=sys.stderr)
    return 2
  manifest = build_lib.read_manifest(path)
  # Records left out by design (filtered_by_view, filtered_by_mimic_split) are no rejects.
  filtered = {k: v for k, v in manifest.items() if k.startswith('filtered_by_')}
  print(json.dumps({'dataset_dir': path, 'counts': manifest['counts'], **filtered,
                    'num_rejects': manifest['num_rejects'],
                    'rejects': f"{path}/{manifest['rejects_file']}"}, indent=2))
  if args.num_shards:
    shards = build_lib.shard_counts(path)
    if any(n != min(args.num_shards, manifest['counts'].get(split, n))
           for split, n in shards.items()):
      print(f'note: reused the finished build there, with {shards} shards per split; '
            '--num_shards applies to a new build (delete that dataset dir, or build into '
            'another --data_dir)', file=sys.stderr)
  stale = build_lib.stale_incomplete_dirs(path)
  if stale:
    print(f'note: {len(stale)} unfinished build dir(s) beside it, from killed builds (or one '
          f'running now): {", ".join(stale)}; delete them once no build of it runs',
          file=sys.stderr)
  for split in manifest.get('empty_splits', []):
    why = (f'split {split!r} has no records in its source files' if not
           manifest['rejects_by_split'].get(split) else
           f'every record of split {split!r} was rejected (reasons in the rejects file)')
    print(f'warning: {why}; the dataset has no {split!r} split', file=sys.stderr)
  return 0


if __name__ == '__main__':
  sys.exit(main())
