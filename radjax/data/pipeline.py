"""The Grain pipeline: ArrayRecord shards -> shuffled, process-sharded, decoded,
augmented, templated, tokenised, padded batches -> global jax.Arrays."""
import dataclasses

import grain
import jax
import numpy as np

from radjax.data import images as images_lib
from radjax.data import schema, source, templates, tokens

split_files = source.split_files


@dataclasses.dataclass
class ExampleProcessor:
  """Record bytes -> arrays for the train/eval step (one Example at a time)."""
  encoder: tokens.TurnEncoder
  task: str
  image_size: int
  num_channels: int
  max_images: int
  max_len: int
  mean: tuple
  std: tuple
  crop_scale: tuple = (0.8, 1.0)

  def images(self, example: dict, rng) -> tuple[np.ndarray, np.ndarray]:
    imgs = example['images']
    if len(imgs) > self.max_images:
      raise schema.SchemaError(f"record {example['id']!r}: images: {len(imgs)} images but "
                               f'config.data.max_images={self.max_images}')
    out = np.zeros((self.max_images, self.image_size, self.image_size, self.num_channels),
                   np.float32)
    for i, img in enumerate(imgs):
      out[i] = images_lib.preprocess(img, size=self.image_size, num_channels=self.num_channels,
                                     mean=self.mean, std=self.std, record_id=example['id'],
                                     rng=rng, crop_scale=self.crop_scale)
    mask = np.arange(self.max_images) < len(imgs)
    return out, mask

  def __call__(self, raw: bytes, rng: np.random.Generator | None) -> dict:
    example = schema.decode(raw)
    pixels, mask = self.images(example, rng)
    instruction, target = templates.get_task(self.task)(example, rng)
    arrays = self.encoder.training_arrays(instruction, target, int(mask.sum()), self.max_len,
                                          example['id'])
    return {**arrays, 'images': pixels, 'image_mask': mask}


def make_processor(config, encoder: tokens.TurnEncoder) -> ExampleProcessor:
  return ExampleProcessor(
      encoder=encoder, task=config.data.task, image_size=config.model.vision.image_size,
      num_channels=config.model.vision.num_channels, max_images=config.data.max_images,
      max_len=config.data.max_len, mean=tuple(config.data.image_mean),
      std=tuple(config.data.image_std), crop_scale=tuple(config.data.crop_scale))


def train_dataset(config, processor: ExampleProcessor, split: str,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> grain.MapDataset:
  """Infinite, reshuffled every epoch, this process's slice, per-process batches.

  Every transform is a function of (seed, record index), so the iterator state
  (one integer) is all a resumed run needs to continue the same stream.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.train.batch_size % process_count:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible '
                     f'by {process_count} processes')
  ds = grain.MapDataset.source(source.open_split(config.data.dir, split)).seed(config.seed)
  if config.data.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(None)[process_index::process_count]
  augment = config.data.augment
  ds = ds.random_map(source.locate_errors(
      lambda raw, rng: processor(raw, rng if augment else None)))
  ds = source.skip_bad_records(ds, config.data.get('max_skipped_records', 0))
  return ds.batch(config.train.batch_size // process_count, drop_remainder=True)


def eval_dataset(config, processor: ExampleProcessor, split: str, batch_size: int,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> grain.MapDataset:
  """One ordered pass, no augmentation; the last partial batch is dropped."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  ds = grain.MapDataset.source(source.open_split(config.data.dir, split))
  ds = ds[process_index::process_count].map(source.locate_errors(lambda raw: processor(raw, None)))
  ds = source.skip_bad_records(ds, config.data.get('max_skipped_records', 0))
  return ds.batch(batch_size // process_count, drop_remainder=True)


def make_iterator(ds: grain.MapDataset, worker_threads: int):
  """A checkpointable iterator; threads read and decode ahead of the step."""
  if worker_threads > 0:
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=worker_threads,
                                                     prefetch_buffer_size=2)))
  return iter(ds)


def to_global(batch: dict, shardings: dict) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch mesh axes."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v)
          for k, v in batch.items() if k in shardings}
