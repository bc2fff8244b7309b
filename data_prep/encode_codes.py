r"""Fills the Examples' `codes` with a trained codec's token ids (LLM-CXR's 16 x 16 = 256
codes per image): a copy of a built dataset whose every record carries the codes of its
first image, row-major. LLM-CXR ships these as a pickle; here they live in the records.

  python -m data_prep.encode_codes --dataset DIR --codec CODEC_WORKDIR --out OUT \
      [--splits train,val,test] [--batch_size 32] [--step N]

Shard by shard, each written beside its final name and renamed when whole, so a killed
run resumes by skipping the shards already there; manifest.json is copied last (its
presence means complete). `codes.json` names the codec and step, written before the first
shard: a rerun with another codec or step into the same --out is refused (its shards
would mix two codecs' codes). Records without images keep `codes: None` (counted). No
pickle: records stay msgpack (radjax/data/schema.py).
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import shutil
import sys

from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from data_prep.writer import MANIFEST, WRITER_OPTIONS
from radjax.data import schema, source
from radjax.eval import llm_cxr

SUMMARY = llm_cxr.CODES_SUMMARY


# A codec workdir's encoder: image records -> code lists (the library's, shared with
# generation).
Codec = llm_cxr.Codec


def encode_shard(codec: Codec, src: str, dst: str, batch_size: int) -> dict:
  """One shard: every record with the codes of its first image. Returns counts."""
  reader = ArrayRecordReader(src)
  examples = [schema.decode(raw) for raw in reader.read_all()]
  reader.close()
  with_images = [ex for ex in examples if ex['images']]
  images = [codec.preprocess(ex['images'][0], ex['id']) for ex in with_images]
  for ex, codes in zip(with_images, codec.codes(images, batch_size)):
    ex['codes'] = codes
  tmp = f'{dst}.tmp-{os.getpid()}'
  writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
  for ex in examples:
    writer.write(schema.encode(ex))
  writer.close()
  os.replace(tmp, dst)  # whole or absent: a resumed run trusts what it finds
  return {'records': len(examples), 'encoded': len(with_images),
          'without_images': len(examples) - len(with_images)}


def _count(path: str) -> dict:
  """The counts encode_shard returned for a shard written earlier."""
  reader = ArrayRecordReader(path)
  examples = [schema.decode(raw) for raw in reader.read_all()]
  reader.close()
  encoded = sum(ex.get('codes') is not None for ex in examples)
  return {'records': len(examples), 'encoded': encoded,
          'without_images': len(examples) - encoded}


def _write_summary(out: str, summary: dict) -> None:
  with open(os.path.join(out, SUMMARY) + '.tmp', 'w') as f:
    json.dump(summary, f, indent=1)
  os.replace(os.path.join(out, SUMMARY) + '.tmp', os.path.join(out, SUMMARY))


def encode_dataset(dataset: str, codec_workdir: str, out: str, splits=('train', 'val', 'test'),
                   batch_size: int = 32, step: int | None = None, log=print) -> dict:
  if not os.path.exists(os.path.join(dataset, MANIFEST)):
    raise FileNotFoundError(f'--dataset={dataset!r}: no {MANIFEST} (not a built dataset)')
  if os.path.abspath(dataset) == os.path.abspath(out):
    raise ValueError('--out must differ from --dataset (the dataset is never written)')
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f'--out={out!r} is a file, not a directory')
  # Shards already in --out are reused: they must be this codec's codes. A codes.json
  # without shards (a run that failed at its first one) has nothing to mix with.
  if glob.glob(os.path.join(out, '*.array_record*')):
    llm_cxr.check_codes_made_by(out, codec_workdir, llm_cxr.codec_step(codec_workdir, step),
                                knobs=('--codec', '--step'))
  codec = Codec(codec_workdir, step)
  os.makedirs(out, exist_ok=True)
  summary = {'codec': os.path.abspath(codec_workdir), 'step': codec.step,
             'codebook_size': codec.cfg.codebook_size, 'grid': list(codec.cfg.code_grid),
             'image_size': codec.cfg.image_size, 'splits': {}}
  _write_summary(out, summary)  # before any shard: what made them
  for split in splits:
    totals = {'records': 0, 'encoded': 0, 'without_images': 0, 'shards_reused': 0}
    for src in source.split_files(dataset, split, '--dataset'):
      dst = os.path.join(out, os.path.basename(src))
      if os.path.exists(dst):
        totals['shards_reused'] += 1
        counts = _count(dst)
      else:
        counts = encode_shard(codec, src, dst, batch_size)
        log(f'{split}: {os.path.basename(dst)}: {counts}')
      for k, v in counts.items():
        totals[k] += v
    summary['splits'][split] = totals
  for name in sorted(os.listdir(dataset)):  # everything else, the manifest last
    path = os.path.join(dataset, name)
    if os.path.isfile(path) and '.array_record' not in name and name != MANIFEST:
      shutil.copy(path, os.path.join(out, name))
  _write_summary(out, summary)
  shutil.copy(os.path.join(dataset, MANIFEST), os.path.join(out, MANIFEST))
  return summary


def ensure_built(out_dir: str, dataset: str, codec: str, step: int = -1,
                 source_builder: str = 'demo', source_kwargs: dict | None = None,
                 splits=('train', 'val', 'test'), batch_size: int = 32) -> dict:
  """main.py's hook (a mixture component's `builder`): `out_dir` encoded from `dataset`
  with `codec` at `step` (-1: its latest), building `dataset` first with
  data_prep.<source_builder> when missing. Returns the codes summary."""
  if not os.path.exists(os.path.join(dataset, MANIFEST)) and source_builder:
    importlib.import_module(f'data_prep.{source_builder}').ensure_built(
        dataset, **(source_kwargs or {}))
  if os.path.exists(os.path.join(out_dir, MANIFEST)):
    with open(os.path.join(out_dir, SUMMARY)) as f:
      return json.load(f)
  return encode_dataset(dataset, codec, out_dir, tuple(splits), batch_size, step)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m data_prep.encode_codes',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--dataset', required=True, help='a built dataset (config.data.dir)')
  p.add_argument('--codec', required=True, help='a vqgan workdir (trained or from-hf)')
  p.add_argument('--out', required=True, help='the dataset with codes')
  p.add_argument('--splits', default='train,val,test')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--step', type=int, default=None, help="the codec's checkpoint (latest)")
  args = p.parse_args(argv)
  try:
    summary = encode_dataset(args.dataset, args.codec, args.out, tuple(args.splits.split(',')),
                             args.batch_size, args.step)
  except (OSError, ValueError) as e:  # named files, records, flags
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(json.dumps(summary))
  return 0


if __name__ == '__main__':
  sys.exit(main())
