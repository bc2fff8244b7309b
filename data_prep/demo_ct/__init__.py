"""Builds the embedded 3D dataset: synthetic chest CT volumes with known findings.

    python -m data_prep.demo_ct --out DIR [--seed 0] [--num_train 300]

Needs nothing beyond the installed packages. A TFDS build
(data_prep/demo_ct/demo_ct_dataset_builder.py) whose dataset dir becomes {out}:
    {out}/demo_ct-{split}.array_record-XXXXX-of-XXXXX   Examples (radjax.data.schema)
    {out}/tokenizer.json       the 2D demo's tokenizer (same vocab_size: same file), so
                               the two datasets mix under one tokenizer
    {out}/terms.txt            keyword terms for the weighted loss (data_prep/terms.py)
    {out}/manifest.json, rejects.jsonl, dataset_info.json, features.json

Each Example: one float16 volume (kind '3d', (rows, cols, slices) in [0, 1], a CT window
of data_prep/ct_renderer.py), a report and CheXpert-style labels
(data_prep/ct_report_composer.py), a 3D box per nodule, and a yes/no conversation
(data_prep/ct_conversation_composer.py). Each draws from its own rng, seeded by (seed,
split, index): records are a pure function of those and the size arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from data_prep import ct_conversation_composer, ct_renderer, ct_report_composer, volume_ops
from data_prep import tokenizer as tokenizer_lib
from radjax.data import schema

SOURCE = 'demo_ct'
SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}
NORMAL_FRACTION = 0.3
TWO_FINDINGS_FRACTION = 0.35  # of abnormal volumes; the rest have one finding
CONVERSATION_STREAM = 1
# MeSH headings of what the volumes show (terms.txt keeps those the text uses).
MESH_TERMS = ('Nodule', 'Mass', 'Pleural Effusion', 'Cardiomegaly')
DEFAULTS = dict(seed=0, num_train=300, num_val=60, num_test=60, rows=64, cols=64,
                min_slices=ct_renderer.SLICE_RANGE[0], max_slices=ct_renderer.SLICE_RANGE[1],
                window='lung', vocab_size=tokenizer_lib.DEFAULT_VOCAB_SIZE)
LICENSE = 'Synthetic volumes and text (data_prep/ct_renderer.py, ct_report_composer.py).'


def example_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_CODES[split], index, stream])


def sample_findings(rng: np.random.Generator) -> set[str]:
  """~30% normal; otherwise one or two distinct findings, uniformly chosen."""
  from data_prep import demo
  return demo.draw_findings(rng, ct_renderer.FINDINGS, NORMAL_FRACTION, TWO_FINDINGS_FRACTION)


def make_example(split: str, index: int, seed: int = 0, rows: int = 64, cols: int = 64,
                 min_slices: int = 16, max_slices: int = 48, window: str = 'lung') -> dict:
  """One Example, a pure function of its arguments."""
  rng = example_rng(seed, split, index)
  findings = sample_findings(rng)
  slices = int(rng.integers(min_slices, max_slices + 1))
  case = ct_renderer.sample_case(rng, findings, rows=rows, cols=cols, slices=slices)
  meta = ct_renderer.meta(case)
  report, labels = ct_report_composer.compose(rng, meta)
  conversation = ct_conversation_composer.compose(
    example_rng(seed, split, index, CONVERSATION_STREAM), meta)
  rid = f'{SOURCE}-{split}-{index:06d}'
  image = volume_ops.to_entry(ct_renderer.render(case, window), case.spacing, rid)
  boxes = [{'box': n['box'], 'label': 'Lung Lesion', 'phrase': n['phrase']}
           for n in meta['nodules']]
  return schema.make_example(id=rid, source=SOURCE, split=split, images=[image],
                             report=report, labels=labels, boxes=boxes,
                             conversation=conversation)


def _check_shape(options: dict) -> None:
  """Up front: a bad size or window would otherwise reject every record after rendering."""
  low = ct_renderer.MIN_SLICES
  if not low <= options['min_slices'] <= options['max_slices']:
    raise ValueError(f"demo_ct: need {low} <= min_slices <= max_slices, got "
                     f"{options['min_slices']}, {options['max_slices']}")
  for knob in ('rows', 'cols'):
    if options[knob] < ct_renderer.MIN_SIDE:
      raise ValueError(f'demo_ct: {knob}={options[knob]}: must be at least '
                       f'{ct_renderer.MIN_SIDE}')
  if options['window'] not in volume_ops.WINDOWS:
    raise ValueError(f"demo_ct: window={options['window']!r}: known windows are "
                     f'{", ".join(sorted(volume_ops.WINDOWS))}')


def build(out_dir: str, replace: bool = True, **kwargs) -> dict:
  """Builds the dataset into out_dir (keyword arguments: DEFAULTS) and returns the
  manifest. An existing demo_ct build there is replaced atomically (replace=True) or
  reused; a directory radjax did not create is never touched (an error)."""
  from data_prep import build as build_lib
  from data_prep.demo_ct import demo_ct_dataset_builder

  unknown = set(kwargs) - set(DEFAULTS)
  if unknown:
    raise TypeError(f'demo_ct: unknown arguments {sorted(unknown)}; known: {sorted(DEFAULTS)}')
  options = {**DEFAULTS, **kwargs}
  from data_prep import demo
  demo.check_counts('demo_ct', **{k: options[k] for k in ('num_train', 'num_val', 'num_test')})
  _check_shape(options)
  start = time.perf_counter()
  config = demo_ct_dataset_builder.DemoCTConfig(
    name='-'.join(f'{k}{v}' for k, v in sorted(options.items())), **options)
  manifest = build_lib.build_into(
    out_dir, lambda data_dir: demo_ct_dataset_builder.Builder(data_dir=data_dir, config=config),
    replace=replace)
  manifest['build_seconds'] = round(time.perf_counter() - start, 2)  # not stored
  return manifest


def ensure_built(out_dir: str, **kwargs) -> dict:
  """Returns the manifest, building the dataset first if it is missing."""
  return build(out_dir, replace=False, **kwargs)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='output directory')
  for key, value in DEFAULTS.items():
    parser.add_argument(f'--{key}', type=type(value), default=value)
  args = vars(parser.parse_args(argv))
  try:
    manifest = build(args.pop('out'), **args)
  except (OSError, ValueError) as e:  # e.g. --out holds someone's files: nothing touched
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f"built in {manifest['build_seconds']:.1f} s; counts: {manifest['counts']}  "
        f"rejects: {manifest['num_rejects']}")
  print(f"finding frequencies: {json.dumps(manifest['finding_frequencies'])}")


if __name__ == '__main__':
  main(sys.argv[1:])
