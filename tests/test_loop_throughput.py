"""The loop's examples/s and tokens/s count the batch it stepped, not the config's."""
import numpy as np

from radjax.train import loop


def test_image_batch_counts_rows_and_token_slots():
  batch = {'tokens': np.zeros((8, 96), np.int32), 'images': np.zeros((8, 4, 4, 1), np.uint8),
           'source': np.zeros((8,), np.int32)}
  assert loop._examples_and_tokens(batch) == {'examples': 8, 'tokens': 768}


def test_volume_batch_counts_its_own_rows():
  # A mixture's volume batch: config.data.volume_batch_size rows, not train.batch_size.
  batch = {'tokens': np.zeros((2, 96), np.int32), 'volumes': np.zeros((2, 4, 8, 8, 1))}
  assert loop._examples_and_tokens(batch) == {'examples': 2, 'tokens': 192}


def test_packed_rows_count_their_segments():
  seg = np.array([[1, 1, 2, 2, 3, 0], [1, 1, 1, 1, 1, 1], [1, 2, 0, 0, 0, 0]], np.int32)
  batch = {'tokens': np.zeros(seg.shape, np.int32), 'segment_ids': seg,
           'truncated': np.array([[0, 0, 1], [0, -1, -1], [0, 0, -1]])}
  assert loop._examples_and_tokens(batch) == {'examples': 6, 'tokens': 18}


def test_classifier_batch_has_no_tokens():
  batch = {'images': np.zeros((4, 8, 8, 1), np.uint8), 'labels': np.zeros((4, 5))}
  assert loop._examples_and_tokens(batch) == {'examples': 4}
