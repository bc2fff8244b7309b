"""The loop's examples/s, tokens/s and data/examples/<name> count the batch it stepped (all
of it, every process's rows: tests/test_multiprocess.py), not the config's."""
import numpy as np

from radjax.core import sharding
from radjax.data import pipeline
from radjax.train import examples_seen
from tests.conftest import tiny_config


def _totals(batch: dict, names=()) -> list:
  return examples_seen.row_counts(batch, names).sum(0).tolist()


def test_image_batch_counts_rows_and_their_components():
  batch = {'tokens': np.zeros((8, 96), np.int32), 'images': np.zeros((8, 4, 4, 1), np.uint8),
           'source': np.array([0, 1, 1, 0, 1, 1, 1, 0], np.int32)}
  assert _totals(batch, ('a', 'b')) == [8, 3, 5]
  assert _totals(batch) == [8]  # no mixture: no components


def test_volume_batch_counts_its_own_rows():
  # A mixture's volume batch: config.data.volume_batch_size rows, not train.batch_size.
  batch = {'tokens': np.zeros((2, 96), np.int32), 'volumes': np.zeros((2, 4, 8, 8, 1))}
  assert _totals(batch) == [2]


def test_packed_rows_count_their_segments_and_their_slots_sources():
  seg = np.array([[1, 1, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1], [1, 2, 0, 0, 0, 0]], np.int32)
  batch = {'tokens': np.zeros(seg.shape, np.int32), 'segment_ids': seg,
           'source': np.array([[0, 1, 1], [1, -1, -1], [0, 0, -1]], np.int32)}
  np.testing.assert_array_equal(examples_seen.row_counts(batch, ('a', 'b')),
                                [[3, 1, 2], [1, 0, 1], [2, 2, 0]])


def test_classifier_batch_has_no_tokens():
  batch = {'images': np.zeros((4, 8, 8, 1), np.uint8), 'labels': np.zeros((4, 5))}
  assert _totals(batch) == [4]


def test_the_window_sums_its_steps_on_the_devices_and_logs_the_last_batch():
  """Two packed steps on the 8-device mesh: examples and token slots per second over both,
  the components of the last one."""
  config = tiny_config()
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  seen = examples_seen.Seen(mesh, rules, ('a', 'b'))
  seg = np.zeros((8, 6), np.int32)
  seg[:, 0], seg[:4, 1] = 1, 2  # 12 examples: 2 in each of rows 0-3
  for sources in (np.zeros((8, 2)), np.where(seg > 1, 1, 0)[:, :2]):
    sources = np.where(seg[:, :2] > 0, sources, -1).astype(np.int32)
    host = {'tokens': np.zeros((8, 6), np.int32), 'segment_ids': seg, 'source': sources}
    shardings = {'tokens': sharding.batch_sharding(mesh, rules, 2)}
    seen.add(host, pipeline.to_global(host, shardings))
  assert seen.take(4.0)() == {'train/examples_per_sec': 24 / 4, 'train/tokens_per_sec': 96 / 4,
                              'data/examples/a': 8.0, 'data/examples/b': 4.0}
  seen.add(host, pipeline.to_global(host, shardings))  # a new window
  assert seen.take(1.0)()['train/examples_per_sec'] == 12
