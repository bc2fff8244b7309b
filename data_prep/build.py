"""Builds a dataset by name: `python -m data_prep build` and the on-first-use demo build.

A built dataset dir is TFDS's version dir (`<data_dir>/<name>/[<config>/]<version>/`):
shards, `dataset_info.json`, `features.json`, `rejects.jsonl` and `manifest.json` (counts
and rejects; written last, inside TFDS's atomic rename). It is what `config.data.dir`
points at. A finished build is reused as it is (TFDS skips it).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import uuid

import tensorflow_datasets as tfds

from data_prep import builder as builder_lib

NAMES = ('demo', 'demo_ct', 'chexpert', 'nih_chest_xray14', 'vindr_cxr', 'mimic_cxr', 'openi',
         'llava_json', 'dolly', 'xraygpt_captions', 'ms_cxr', 'padchest_gr', 'chexpert_plus',
         'radfm', 'chest_imagenome')


def builder_class(name: str) -> type[builder_lib.RadjaxBuilder]:
  try:
    module = importlib.import_module(f'data_prep.{name}.{name}_dataset_builder')
  except ModuleNotFoundError as e:
    if e.name and e.name.startswith(f'data_prep.{name}'):
      available = [n for n in NAMES if importlib.util.find_spec(f'data_prep.{n}') is not None]
      raise ValueError(f'unknown dataset {name!r}; available: {", ".join(available)}') from e
    raise
  return module.Builder


BEAM_MISSING = ('Apache Beam is not installed in this Python: Beam builds run from '
                '.beam-venv/bin/python (make it with `bash launch/beam_venv.sh`)')


def check_beam(beam_runner=None, beam_options=None) -> None:
  """A Beam build without apache_beam is a ValueError saying where Beam lives."""
  if (beam_runner or beam_options) and importlib.util.find_spec('apache_beam') is None:
    raise ValueError(f'--beam_runner/--beam_options: {BEAM_MISSING}')


def download_config(manual_dir=None, beam_runner=None, beam_options=None, num_shards=None):
  return tfds.download.DownloadConfig(
    manual_dir=manual_dir, beam_runner=beam_runner, beam_options=beam_options,
    num_shards=num_shards, compute_stats=tfds.download.ComputeStatsMode.SKIP,
    try_download_gcs=False)


def prepare(builder: builder_lib.RadjaxBuilder, **config_kwargs) -> str:
  """Runs (or reuses) the build; returns the dataset dir. A split whose every record is
  rejected (e.g. a partial download) is left out, and the other splits are built again
  without it (smallest first, so little is redone); so is one with no records at all (from
  the start: RadjaxBuilder._drop_itemless). All splits empty is an error."""
  while True:
    try:
      builder.download_and_prepare(download_config=download_config(**config_kwargs),
                                   file_format='array_record')
      return os.fspath(builder.data_path)
    except Exception as e:
      if not builder.drop_empty_splits(e):
        raise


def build(name: str, data_dir: str, manual_dir: str | None = None, config: str | None = None,
          beam_runner=None, beam_options=None, num_shards: int | None = None,
          max_short_side: int | None = None) -> str:
  """Builds `name` under data_dir from manual_dir; returns the dataset dir. With
  max_short_side, 2D images are stored downscaled (data_prep/downscale.py)."""
  cls, manual_dir = _checked(name, manual_dir, config, beam_runner, beam_options, num_shards)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  b = cls(data_dir=data_dir, config=config, max_short_side=max_short_side)
  new = [p for p in (os.path.join(data_dir, 'downloads'), os.path.join(data_dir, b.name))
         if not os.path.exists(p)]
  fresh = not os.path.exists(data_dir)
  try:
    path = prepare(b, manual_dir=manual_dir,
                   beam_runner=beam_runner, beam_options=beam_options, num_shards=num_shards)
  except Exception:
    for p in new:  # what TFDS made before failing, when it holds no data: gone again
      _remove_if_bookkeeping(p)
    if fresh and os.path.isdir(data_dir) and not os.listdir(data_dir):
      os.rmdir(data_dir)
    raise
  _check_side(path, max_short_side)
  return path


def _remove_if_bookkeeping(path: str) -> None:
  """Removes `path` if its only files are TFDS's `.config/metadata.json` (none of a split,
  a shard or an incomplete build)."""
  for root, _, names in os.walk(path):
    if names and os.path.basename(root) != '.config':
      return
  shutil.rmtree(path, ignore_errors=True)


def _checked(name, manual_dir, config, beam_runner, beam_options, num_shards):
  """(builder class, absolute manual_dir) once the arguments are checked."""
  if num_shards is not None and num_shards < 1:
    raise ValueError(f'{name}: num_shards {num_shards}: must be at least 1')
  check_beam(beam_runner, beam_options)
  cls = builder_class(name)
  configs = [c.name for c in cls.BUILDER_CONFIGS]
  if config is not None and config not in configs:
    raise ValueError(f'{name}: no config {config!r}; '
                     + (f'its configs: {", ".join(configs)}' if configs else 'it has none'))
  if manual_dir and not cls.MANUAL_DOWNLOAD_INSTRUCTIONS:  # else dropped without a word
    raise ValueError(f'{name}: --manual_dir {manual_dir}: {name} reads no downloaded files '
                     '(it makes its own); leave --manual_dir out')
  manual_dir = manual_dir and os.path.abspath(os.path.expanduser(manual_dir))
  if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not (manual_dir and os.path.isdir(manual_dir)
                                                and os.listdir(manual_dir)):
    # Checked here: TFDS would fail the same way with an AssertionError traceback.
    raise builder_lib.ManualDirError(
      f'{name}: --manual_dir {manual_dir or "(not given)"} is not a directory or is empty.\n'
      f'{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}')
  return cls, manual_dir


def _check_side(path: str, max_short_side: int | None) -> None:
  built_side = read_manifest(path).get('max_short_side')
  if built_side != max_short_side:  # TFDS reused a finished build made otherwise
    raise ValueError(
      f'{path} was built with max_short_side={built_side} and this build asks for '
      f'{max_short_side}; nothing was changed. Build into another --data_dir, or delete '
      'that dataset dir first.')


def stale_incomplete_dirs(dataset_dir: str) -> list[str]:
  """TFDS's `incomplete.XXXXXX_<version>` work dirs beside a dataset dir: left by a killed
  build (or in use by one still running), never removed by TFDS."""
  parent, version = os.path.split(os.path.normpath(dataset_dir))
  return sorted(glob.glob(os.path.join(glob.escape(parent), f'incomplete.*_{version}')))


def shard_counts(dataset_dir: str) -> dict[str, int]:
  """{split: number of ArrayRecord shards} of a dataset dir."""
  counts = {}
  for f in os.listdir(dataset_dir):
    m = re.fullmatch(r'.+?-(\w+)\.array_record-\d+-of-(\d+)', f)
    if m:
      counts[m.group(1)] = int(m.group(2))
  return dict(sorted(counts.items()))


def read_manifest(dataset_dir: str) -> dict:
  with open(os.path.join(dataset_dir, builder_lib.MANIFEST)) as f:
    return json.load(f)


def is_radjax_dataset(path: str) -> bool:
  return os.path.isfile(os.path.join(path, builder_lib.MANIFEST))


def build_into(out_dir: str, make_builder, replace: bool = False, **config_kwargs) -> dict:
  """Builds with `make_builder(data_dir=...)` and publishes the dataset dir as out_dir.

  Never deletes what radjax did not create: an out_dir that exists, is not empty and
  holds no manifest.json is an error. With replace=True an existing build of the same
  dataset there, holding only what a build writes, is swapped out atomically (another
  dataset, or other files, is an error); otherwise it is reused. Returns the manifest.
  """
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  if is_radjax_dataset(out_dir) and not replace:
    return read_manifest(out_dir)
  if os.path.exists(out_dir) and not is_radjax_dataset(out_dir):
    if not os.path.isdir(out_dir) or os.listdir(out_dir):
      raise FileExistsError(
        f'{out_dir} exists and is not a radjax dataset (no {builder_lib.MANIFEST}); '
        'radjax will not delete or write into it. Choose another directory (--out, or '
        'config.data.dir where a run builds it) or empty it yourself.')
    os.rmdir(out_dir)  # empty: nothing of anyone's is lost
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  tmp_root = f'{out_dir}.tmp-{uuid.uuid4().hex[:8]}'
  try:
    builder = make_builder(data_dir=tmp_root)
    if is_radjax_dataset(out_dir):
      _check_replaceable(out_dir, builder.name)
    built = prepare(builder, **config_kwargs)
    old = None
    if is_radjax_dataset(out_dir) and not replace:
      # Another run published it while this one built (two runs on one config.data.dir):
      # theirs is kept and reused, as if it had been there first; it may be in use.
      return read_manifest(out_dir)
    if os.path.exists(out_dir):  # a radjax dataset, replaced on request
      old = f'{out_dir}.old-{uuid.uuid4().hex[:8]}'
      os.rename(out_dir, old)
    os.rename(built, out_dir)
    if old:
      shutil.rmtree(old)
  finally:
    shutil.rmtree(tmp_root, ignore_errors=True)
  return read_manifest(out_dir)


# What a build writes into a dataset dir; anything else there is someone's, kept.
_BUILT = re.compile(r'.*\.array_record-\d+-of-\d+|(?:manifest|dataset_info|features'
                    r'|tokenizer)\.json|rejects\.jsonl|terms\.txt')


def _check_replaceable(out_dir: str, name: str) -> None:
  """Replacing swaps out a build of this same dataset holding only what a build writes."""
  built_by = read_manifest(out_dir).get('dataset')
  others = [f for f in os.listdir(out_dir) if not _BUILT.fullmatch(f)]
  if built_by != name or others:
    why = (f'a {built_by!r} build' if built_by != name else f'files a build does not write: '
           f'{sorted(others)[:5]}')
    raise FileExistsError(f'{out_dir} holds {why}; radjax replaces only its own {name!r} '
                          'builds. Choose another --out or empty it yourself.')


def ensure_built(name: str, out_dir: str, manual_dir: str | None = None,
                 config: str | None = None, num_shards: int | None = None,
                 max_short_side: int | None = None, **kwargs) -> dict:
  """The manifest of the dataset at out_dir, built first with data_prep.<name> when it is
  missing (main.py's `config.data.builder` and a mixture component's `builder`): the demos
  build themselves from kwargs; the others from manual_dir, published as out_dir itself."""
  module = importlib.import_module(f'data_prep.{name}')
  if hasattr(module, 'ensure_built'):
    own = dict(manual_dir=manual_dir, config=config, num_shards=num_shards,
               max_short_side=max_short_side)
    given = [k for k, v in own.items() if v is not None]
    if given:
      raise ValueError(f'{name} builds itself: builder_kwargs {given} are for datasets '
                       'built from a manual_dir')
    return module.ensure_built(out_dir, **kwargs)
  if kwargs:
    raise ValueError(f'{name}: unknown builder_kwargs {sorted(kwargs)}; it takes manual_dir, '
                     'config, num_shards, max_short_side')
  cls, manual_dir = _checked(name, manual_dir, config, None, None, num_shards)
  manifest = build_into(
    out_dir, lambda data_dir: cls(data_dir=data_dir, config=config,
                                  max_short_side=max_short_side),
    manual_dir=manual_dir, num_shards=num_shards)
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  _check_side(out_dir, max_short_side)
  leftovers = sorted(glob.glob(f'{glob.escape(out_dir)}.tmp-*'))
  if leftovers:  # up to the dataset's size each
    logging.warning('%d unfinished build dir(s) beside %s, from killed builds (or one running '
                    'now): %s; delete them once no build of it runs', len(leftovers), out_dir,
                    ', '.join(leftovers))
  return manifest
