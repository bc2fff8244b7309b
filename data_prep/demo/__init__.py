"""Builds the embedded default dataset: synthetic radiographs + real OpenI sentences.

    python -m data_prep.demo --out data/demo [--seed 0]

Needs nothing beyond the installed packages (the OpenI texts ship inside the
torchxrayvision wheel). A TFDS build (data_prep/demo/demo_dataset_builder.py) whose
dataset dir becomes {out}:
    {out}/demo-{split}.array_record-XXXXX-of-XXXXX   Examples (radjax.data.schema)
    {out}/tokenizer.json                             byte-level BPE, specials 0-8
    {out}/manifest.json                              counts, rejects, seed, frequencies
    {out}/rejects.jsonl, dataset_info.json, features.json

Every example draws from its own rng, seeded by (seed, split, index), so the
records are byte-identical for a seed whatever the number of worker processes. The
conversation (data_prep/conversation_composer.py) draws from a second stream of the
same seed, so adding it left the images, reports, labels and boxes as they were.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator

import msgpack
import numpy as np
from PIL import Image

from data_prep import conversation_composer, cxr_renderer, report_composer
from data_prep import tokenizer as tokenizer_lib
from radjax.data import schema

SOURCE = 'demo'
SPLIT_CODES = {'train': 0, 'val': 1, 'test': 2}
NORMAL_FRACTION = 0.35
TWO_FINDINGS_FRACTION = 0.4  # of abnormal images; the rest have one finding
LICENSE = (
  'Images: synthetic (procedural renderer, data_prep/cxr_renderer.py). Report '
  'sentences: Indiana University / OpenI chest X-ray collection, CC BY-NC-ND 4.0 '
  '(https://creativecommons.org/licenses/by-nc-nd/4.0/); non-commercial use only.'
)


CONVERSATION_STREAM = 1  # the conversation's rng: (seed, split, index, this)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_CODES[split], index])


def conversation_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_CODES[split], index, CONVERSATION_STREAM])


def draw_findings(rng: np.random.Generator, names, normal_fraction: float,
                  two_fraction: float) -> set[str]:
  """None with probability normal_fraction; otherwise one or (with two_fraction) two
  distinct `names`, uniformly chosen. Shared by the 2D and CT demos."""
  if rng.random() < normal_fraction:
    return set()
  k = 2 if rng.random() < two_fraction else 1
  picks = rng.choice(len(names), size=k, replace=False)
  return {names[i] for i in sorted(picks)}


def sample_findings(rng: np.random.Generator) -> set[str]:
  """~35% normal; otherwise one or two distinct findings, uniformly chosen."""
  return draw_findings(rng, report_composer.FINDINGS, NORMAL_FRACTION, TWO_FINDINGS_FRACTION)


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='PNG')
  return buf.getvalue()


def make_demo_example(seed: int, split: str, index: int) -> dict:
  """One Example, a pure function of (seed, split, index)."""
  rng = example_rng(seed, split, index)
  findings = sample_findings(rng)
  image, meta = cxr_renderer.render(rng, findings)
  report, labels = report_composer.compose(rng, findings, meta)
  conversation = conversation_composer.compose(conversation_rng(seed, split, index), findings,
                                               meta)
  return schema.make_example(
    id=f'demo-{split}-{index:06d}',
    source=SOURCE,
    split=split,
    images=[{'data': encode_png(image), 'format': 'png', 'kind': '2d', 'spacing': None}],
    report=report,
    labels=labels,
    boxes=meta['boxes'],
    conversation=conversation,
    codes=None,
  )


def render_items(seed: int, items: list[tuple[str, int]], start: int, stop: int,
                 path: str) -> None:
  """Worker entry point: renders items[start:stop] into a msgpack stream file."""
  cxr_renderer.tune_allocator()  # safe: this is a process of our own
  with open(path, 'wb') as f:
    for split, i in items[start:stop]:
      f.write(schema.encode(make_demo_example(seed, split, i)))


def render_in_subprocesses(
  seed: int, items: list[tuple[str, int]], num_workers: int
) -> Iterator[dict]:
  """Renders (split, index) items in `python -c` subprocesses, yielding them in order.

  Plain subprocesses rather than multiprocessing: no pickling, no re-import of
  the caller's __main__ (an unguarded script would otherwise respawn workers
  forever), and no fork of a process that may hold JAX threads.
  """
  bounds = np.linspace(0, len(items), num_workers + 1).astype(int)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
  with tempfile.TemporaryDirectory(prefix='radjax-demo-') as tmp:
    workers = []
    try:
      for w, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path, log = os.path.join(tmp, f'part-{w}.msgpack'), os.path.join(tmp, f'part-{w}.log')
        code = (
          'from data_prep.demo import render_items; '
          f'render_items({seed}, {items[lo:hi]!r}, 0, {int(hi - lo)}, {path!r})'
        )
        with open(log, 'wb') as err:
          proc = subprocess.Popen([sys.executable, '-c', code], env=env, stderr=err)
        workers.append((proc, path, log))
      for proc, path, log in workers:  # in order: part 0 is read while part 1 renders
        if proc.wait() != 0:
          with open(log, errors='replace') as f:
            raise RuntimeError(f'demo worker failed (exit {proc.returncode}):\n{f.read()[-3000:]}')
        with open(path, 'rb') as f:
          yield from msgpack.Unpacker(f, raw=False)
    finally:
      for proc, _, _ in workers:
        if proc.poll() is None:
          proc.kill()
          proc.wait()


def count_findings(example: dict, counter: Counter) -> None:
  present = [
    f
    for f, obs in report_composer.FINDING_TO_OBSERVATION.items()
    if example.get('labels', {}).get(obs) == 1
  ]
  counter.update(present or ['normal'])


def check_counts(name: str, **counts: int) -> None:
  """Each split needs a record: a split of none would be left out of the dataset."""
  for knob, n in counts.items():
    if n < 1:
      raise ValueError(f'{name}: {knob}={n!r}: every split needs at least 1 record')


def build(
  out_dir: str,
  seed: int = 0,
  num_train: int = 3000,
  num_val: int = 300,
  num_test: int = 200,
  vocab_size: int = tokenizer_lib.DEFAULT_VOCAB_SIZE,
  num_workers: int | None = None,
  corrupt_hook: Callable[[dict], dict] | None = None,
  replace: bool = True,
) -> dict:
  """Builds the dataset into out_dir and returns the manifest.

  An existing demo build at out_dir is replaced atomically (replace=True) or reused;
  a directory radjax did not create is never touched (an error). corrupt_hook(example)
  -> example runs just before validation; tests use it to plant broken records.
  """
  from data_prep import build as build_lib
  from data_prep.demo import demo_dataset_builder

  check_counts('demo', num_train=num_train, num_val=num_val, num_test=num_test)
  start = time.perf_counter()
  config = demo_dataset_builder.DemoConfig(
    name=f's{seed}-{num_train}-{num_val}-{num_test}-v{vocab_size}', seed=seed,
    num_train=num_train, num_val=num_val, num_test=num_test, vocab_size=vocab_size)
  total = num_train + num_val + num_test
  if num_workers is None:
    num_workers = min(os.cpu_count() or 1, 8) if total >= 500 else 1

  def make_builder(data_dir):
    b = demo_dataset_builder.Builder(data_dir=data_dir, config=config)
    b.num_workers, b.corrupt_hook = num_workers, corrupt_hook
    return b

  manifest = build_lib.build_into(out_dir, make_builder, replace=replace)
  # Reported to the caller, not stored: the manifest stays deterministic.
  manifest['build_seconds'] = round(time.perf_counter() - start, 2)
  return manifest


def ensure_built(out_dir: str, **kwargs) -> dict:
  """Returns the manifest, building the dataset first if it is missing.

  Never deletes or writes into a directory that radjax did not create.
  """
  return build(out_dir, replace=False, **kwargs)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num_train', type=int, default=3000)
  parser.add_argument('--num_val', type=int, default=300)
  parser.add_argument('--num_test', type=int, default=200)
  parser.add_argument('--vocab_size', type=int, default=tokenizer_lib.DEFAULT_VOCAB_SIZE)
  parser.add_argument('--num_workers', type=int, default=None)
  args = parser.parse_args(argv)
  try:
    manifest = build(
      args.out,
      seed=args.seed,
      num_train=args.num_train,
      num_val=args.num_val,
      num_test=args.num_test,
      vocab_size=args.vocab_size,
      num_workers=args.num_workers,
    )
  except (OSError, ValueError) as e:  # e.g. --out holds someone's files: nothing touched
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f"wrote {args.out} in {manifest['build_seconds']:.1f} s")
  print(f"counts: {manifest['counts']}  rejects: {manifest['num_rejects']}")
  print(f"finding frequencies: {json.dumps(manifest['finding_frequencies'])}")


if __name__ == '__main__':
  main(sys.argv[1:])
