"""The embedded default as a TFDS builder: synthetic radiographs + real OpenI sentences.

Needs no manual_dir. `data_prep.demo.build` / `ensure_built` publish the build as one
flat dataset dir (what configs/demo.py's config.data.dir points at).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep import cxr_renderer, demo, openi_reports, report_composer, terms
from data_prep import tokenizer as tokenizer_lib

# Train items are written in the order the first demo writer's 4 round-robin shards
# held them, so runs read the same records in the same order as before.
_LEGACY_SHARDS = {'train': 4, 'val': 1, 'test': 1}


@dataclasses.dataclass(eq=False)
class DemoConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 3000
  num_val: int = 300
  num_test: int = 200
  vocab_size: int = tokenizer_lib.DEFAULT_VOCAB_SIZE


def mesh_terms() -> tuple[str, ...]:
  """MeSH headings that assert one of the drawn findings by themselves (OpenI's mapping,
  data_prep/openi_reports.py); those that need a qualifier ("Cardiac Shadow/enlarged",
  "Costophrenic Angle/blunted") name anatomy, not the finding, and are left out."""
  drawn = set(report_composer.FINDING_TO_OBSERVATION.values())
  return tuple(name for name, (obs, qualifiers) in openi_reports.MESH_TO_OBSERVATION.items()
               if obs in drawn and not qualifiers)


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """Synthetic chest radiographs with known findings, reported with real OpenI sentences."""

  name = 'demo'
  SOURCE = demo.SOURCE
  BUILDER_CONFIGS = [DemoConfig(name='default')]
  num_workers = 1
  corrupt_hook = None

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to read: everything is rendered
    self._frequencies, self._terms = {}, terms.TermCounter(mesh_terms())
    return {split: self._generate_examples(split, items)
            for split, items in self.split_items(None).items()}

  def split_items(self, root):
    c = self.builder_config
    out = {}
    for split, n in (('train', c.num_train), ('val', c.num_val), ('test', c.num_test)):
      k = _LEGACY_SHARDS[split]
      order = [i for shard in range(k) for i in range(shard, n, k)]
      out[split] = [{'id': f'demo-{split}-{i:06d}', 'file': 'cxr_renderer', 'row': i}
                    for i in order]
    return out

  def make_example(self, item, split):
    return demo.make_demo_example(self.builder_config.seed, split, item['row'])

  def process_items(self, split, items):
    if self.num_workers > 1:
      rendered = demo.render_in_subprocesses(
        self.builder_config.seed, [(split, it['row']) for it in items], self.num_workers)
    else:
      rendered = (self.make_example(it, split) for it in items)
    for index, (item, example) in enumerate(zip(items, rendered)):
      if self.corrupt_hook is not None:
        example = self.corrupt_hook(example)
      yield builder_lib.process_item(self, split, index, item, example)

  def observe_written(self, split, example):
    # Counts and terms.txt describe what was written (also on Beam, where the items
    # are rendered in other processes).
    demo.count_findings(example, self._frequencies.setdefault(split, Counter()))
    self._terms.add_example(example)

  def extra_files(self):
    tok = tokenizer_lib.train_tokenizer(self.builder_config.vocab_size)
    return {'tokenizer.json': tok.to_str(), terms.FILENAME: self._terms.file_text()}

  def manifest_extra(self):
    c = self.builder_config
    return {
      'generator': 'data_prep.demo',
      'seed': c.seed,
      'requested': {'train': c.num_train, 'val': c.num_val, 'test': c.num_test},
      'image_format': 'png',
      'image_size_range': list(cxr_renderer.SIZE_RANGE),
      'findings': list(report_composer.FINDINGS),
      'finding_to_observation': report_composer.FINDING_TO_OBSERVATION,
      'finding_frequencies': {k: dict(sorted(v.items()))
                              for k, v in getattr(self, '_frequencies', {}).items()},
      'tokenizer': 'tokenizer.json',
      'terms': terms.FILENAME,
      'vocab_size': c.vocab_size,
      'special_tokens': tokenizer_lib.SPECIAL_TOKENS,
      'sentence_pools': report_composer.default_pools().sizes(),
      'license': demo.LICENSE,
    }
