"""Builds the embedded default dataset: synthetic radiographs + real OpenI sentences.

    python -m data_prep.demo --out data/demo [--seed 0]

Needs nothing beyond the installed packages (the OpenI texts ship inside the
torchxrayvision wheel). Output, via data_prep.writer:
    {out}/{split}-XXXXX-of-XXXXX.array_record   Examples (radjax.data.schema)
    {out}/tokenizer.json                         byte-level BPE, specials 0-8
    {out}/manifest.json                          counts, rejects, seed, frequencies

Every example draws from its own rng, seeded by (seed, split, index), so the
records are byte-identical for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import argparse
import io
import itertools
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

from data_prep import cxr_renderer, report_composer, writer
from data_prep import tokenizer as tokenizer_lib
from radjax.data import schema

SOURCE = "demo"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
NORMAL_FRACTION = 0.35
TWO_FINDINGS_FRACTION = 0.4  # of abnormal images; the rest have one finding
LICENSE = (
  "Images: synthetic (procedural renderer, data_prep/cxr_renderer.py). Report "
  "sentences: Indiana University / OpenI chest X-ray collection, CC BY-NC-ND 4.0 "
  "(https://creativecommons.org/licenses/by-nc-nd/4.0/); non-commercial use only."
)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLIT_CODES[split], index])


def sample_findings(rng: np.random.Generator) -> set[str]:
  """~35% normal; otherwise one or two distinct findings, uniformly chosen."""
  if rng.random() < NORMAL_FRACTION:
    return set()
  k = 2 if rng.random() < TWO_FINDINGS_FRACTION else 1
  picks = rng.choice(len(report_composer.FINDINGS), size=k, replace=False)
  return {report_composer.FINDINGS[i] for i in sorted(picks)}


def encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def make_demo_example(seed: int, split: str, index: int) -> dict:
  """One Example, a pure function of (seed, split, index)."""
  rng = example_rng(seed, split, index)
  findings = sample_findings(rng)
  image, meta = cxr_renderer.render(rng, findings)
  report, labels = report_composer.compose(rng, findings, meta)
  return schema.make_example(
    id=f"demo-{split}-{index:06d}",
    source=SOURCE,
    split=split,
    images=[{"data": encode_png(image), "format": "png", "kind": "2d", "spacing": None}],
    report=report,
    labels=labels,
    boxes=meta["boxes"],
    conversation=[],
    codes=None,
  )


def _work_items(sizes: dict[str, int]) -> list[tuple[str, int]]:
  """Every (split, index) to render, in the order they are written."""
  return [(split, i) for split, n in sizes.items() for i in range(n)]


def render_range(seed: int, sizes: dict[str, int], start: int, stop: int, path: str) -> None:
  """Worker entry point: renders work items [start, stop) into a msgpack stream file."""
  cxr_renderer.tune_allocator()  # safe: this is a process of our own
  with open(path, "wb") as f:
    for split, i in _work_items(sizes)[start:stop]:
      f.write(schema.encode(make_demo_example(seed, split, i)))


def _render_in_subprocesses(seed: int, sizes: dict[str, int], num_workers: int) -> Iterator[dict]:
  """Renders in `python -c` subprocesses, yielding examples in work-item order.

  Plain subprocesses rather than multiprocessing: no pickling, no re-import of
  the caller's __main__ (an unguarded script would otherwise respawn workers
  forever), and no fork of a process that may hold JAX threads.
  """
  total = len(_work_items(sizes))
  bounds = np.linspace(0, total, num_workers + 1).astype(int)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
  with tempfile.TemporaryDirectory(prefix="radjax-demo-") as tmp:
    workers = []
    try:
      for w, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        path, log = os.path.join(tmp, f"part-{w}.msgpack"), os.path.join(tmp, f"part-{w}.log")
        code = (
          "from data_prep.demo import render_range; "
          f"render_range({seed}, {sizes!r}, {int(lo)}, {int(hi)}, {path!r})"
        )
        with open(log, "wb") as err:
          proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=err)
        workers.append((proc, path, log))
      for proc, path, log in workers:  # in order: part 0 is read while part 1 renders
        if proc.wait() != 0:
          with open(log, errors="replace") as f:
            raise RuntimeError(f"demo worker failed (exit {proc.returncode}):\n{f.read()[-3000:]}")
        with open(path, "rb") as f:
          yield from msgpack.Unpacker(f, raw=False)
    finally:
      for proc, _, _ in workers:
        if proc.poll() is None:
          proc.kill()
          proc.wait()


def generate(
  seed: int, sizes: dict[str, int], num_workers: int
) -> Iterator[tuple[str, Iterator[dict]]]:
  """Yields (split, its examples in index order); each split must be consumed in turn."""
  if num_workers <= 1:
    for split, n in sizes.items():
      yield split, (make_demo_example(seed, split, i) for i in range(n))
    return
  stream = _render_in_subprocesses(seed, sizes, num_workers)
  try:
    for split, n in sizes.items():
      yield split, itertools.islice(stream, n)
  finally:
    stream.close()  # stops the workers if the caller gives up early


def _count_findings(examples: Iterator[dict], counter: Counter) -> Iterator[dict]:
  for ex in examples:
    present = [
      f
      for f, obs in report_composer.FINDING_TO_OBSERVATION.items()
      if ex.get("labels", {}).get(obs) == 1
    ]
    counter.update(present or ["normal"])
    yield ex


def build(
  out_dir: str,
  seed: int = 0,
  num_train: int = 3000,
  num_val: int = 200,
  num_test: int = 200,
  vocab_size: int = tokenizer_lib.DEFAULT_VOCAB_SIZE,
  num_workers: int | None = None,
  num_shards: dict[str, int] | None = None,
  corrupt_hook: Callable[[dict], dict] | None = None,
) -> dict:
  """Builds the dataset into out_dir (atomically replacing it) and returns the manifest.

  corrupt_hook(example) -> example runs just before writing; tests use it to
  inject broken records and check that they are rejected with reasons.
  """
  start = time.perf_counter()
  sizes = {"train": num_train, "val": num_val, "test": num_test}
  if num_workers is None:
    num_workers = min(os.cpu_count() or 1, 8) if sum(sizes.values()) >= 500 else 1
  num_shards = num_shards or {"train": 4, "val": 1, "test": 1}

  tok = tokenizer_lib.train_tokenizer(vocab_size)
  # Filled while the writer consumes the generators; build_dataset serialises
  # manifest_extra only after every split is written, so it sees final counts.
  frequencies: dict[str, Counter] = {}

  def examples_by_split():
    for split, examples in generate(seed, sizes, num_workers):
      frequencies[split] = Counter()
      examples = _count_findings(examples, frequencies[split])
      if corrupt_hook is not None:
        examples = map(corrupt_hook, examples)
      yield split, examples

  manifest = writer.build_dataset(
    out_dir,
    examples_by_split(),
    manifest_extra={
      "dataset": "demo",
      "source": SOURCE,
      "generator": "data_prep.demo",
      "seed": seed,
      "requested": sizes,
      "image_format": "png",
      "image_size_range": list(cxr_renderer.SIZE_RANGE),
      "findings": list(report_composer.FINDINGS),
      "finding_to_observation": report_composer.FINDING_TO_OBSERVATION,
      "finding_frequencies": frequencies,  # of generated examples
      "tokenizer": "tokenizer.json",
      "vocab_size": tok.get_vocab_size(),
      "special_tokens": tokenizer_lib.SPECIAL_TOKENS,
      "sentence_pools": report_composer.default_pools().sizes(),
      "license": LICENSE,
    },
    num_shards=num_shards,
    extra_files={"tokenizer.json": tok.to_str()},
  )
  manifest["finding_frequencies"] = {k: dict(sorted(c.items())) for k, c in frequencies.items()}
  # Reported to the caller, not stored: the manifest stays deterministic.
  manifest["build_seconds"] = round(time.perf_counter() - start, 2)
  return manifest


def ensure_built(out_dir: str, **kwargs) -> dict:
  """Returns the manifest, building the dataset first if it is missing."""
  path = os.path.join(out_dir, writer.MANIFEST)
  if os.path.exists(path):
    return writer.read_manifest(out_dir)
  return build(out_dir, **kwargs)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--num_train", type=int, default=3000)
  parser.add_argument("--num_val", type=int, default=200)
  parser.add_argument("--num_test", type=int, default=200)
  parser.add_argument("--vocab_size", type=int, default=tokenizer_lib.DEFAULT_VOCAB_SIZE)
  parser.add_argument("--num_workers", type=int, default=None)
  args = parser.parse_args(argv)
  manifest = build(
    args.out,
    seed=args.seed,
    num_train=args.num_train,
    num_val=args.num_val,
    num_test=args.num_test,
    vocab_size=args.vocab_size,
    num_workers=args.num_workers,
  )
  print(f"wrote {args.out} in {manifest['build_seconds']:.1f} s")
  print(f"counts: {manifest['counts']}  rejects: {manifest['num_rejects']}")
  print(f"finding frequencies: {json.dumps(manifest['finding_frequencies'])}")


if __name__ == "__main__":
  main(sys.argv[1:])
