"""The embedded 3D dataset as a TFDS builder: synthetic chest CT with known findings.

Needs no manual_dir. `data_prep.demo_ct.build` / `ensure_built` publish the build as one
flat dataset dir (what config.data.dir points at).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import tensorflow_datasets as tfds

from data_prep import builder as builder_lib
from data_prep import ct_renderer, ct_report_composer, demo_ct, terms
from data_prep import tokenizer as tokenizer_lib


@dataclasses.dataclass(eq=False)
class DemoCTConfig(tfds.core.BuilderConfig):
  seed: int = 0
  num_train: int = 300
  num_val: int = 60
  num_test: int = 60
  rows: int = 64
  cols: int = 64
  min_slices: int = ct_renderer.SLICE_RANGE[0]
  max_slices: int = ct_renderer.SLICE_RANGE[1]
  window: str = 'lung'
  vocab_size: int = tokenizer_lib.DEFAULT_VOCAB_SIZE


def _present(example: dict) -> list[str]:
  labels = example['labels']
  found = [f for f, obs in ct_report_composer.FINDING_TO_OBSERVATION.items()
           if labels.get(obs) == 1]
  return found or ['normal']


class Builder(builder_lib.RadjaxBuilder, skip_registration=True):
  """Synthetic chest CT volumes with nodules (3D boxes), effusions and cardiomegaly."""

  name = 'demo_ct'
  SOURCE = demo_ct.SOURCE
  BUILDER_CONFIGS = [DemoCTConfig(name='default')]

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to read: everything is rendered
    self._frequencies, self._terms = {}, terms.TermCounter(demo_ct.MESH_TERMS)
    return {split: self._generate_examples(split, items)
            for split, items in self.split_items(None).items()}

  def split_items(self, root):
    c = self.builder_config
    return {split: [{'id': f'{demo_ct.SOURCE}-{split}-{i:06d}', 'file': 'ct_renderer', 'row': i}
                    for i in range(n)]
            for split, n in (('train', c.num_train), ('val', c.num_val), ('test', c.num_test))}

  def make_example(self, item, split):
    c = self.builder_config
    return demo_ct.make_example(split, item['row'], seed=c.seed, rows=c.rows, cols=c.cols,
                                min_slices=c.min_slices, max_slices=c.max_slices,
                                window=c.window)

  def observe_written(self, split, example):
    # What is written is what the counts and terms describe, on the local path and on Beam.
    self._frequencies.setdefault(split, Counter()).update(_present(example))
    self._terms.add_example(example)

  def extra_files(self):
    tok = tokenizer_lib.train_tokenizer(self.builder_config.vocab_size)
    return {'tokenizer.json': tok.to_str(), terms.FILENAME: self._terms.file_text()}

  def manifest_extra(self):
    c = self.builder_config
    return {
      'generator': 'data_prep.demo_ct',
      **{k: getattr(c, k) for k in demo_ct.DEFAULTS},
      'image_format': 'npy',
      'findings': list(ct_renderer.FINDINGS),
      'finding_to_observation': ct_report_composer.FINDING_TO_OBSERVATION,
      'finding_frequencies': {k: dict(sorted(v.items()))
                              for k, v in getattr(self, '_frequencies', {}).items()},
      'tokenizer': 'tokenizer.json',
      'terms': terms.FILENAME,
      'license': demo_ct.LICENSE,
    }
