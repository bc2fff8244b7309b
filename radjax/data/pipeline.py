"""The Grain pipeline: a dataset's records (radjax/data/source.py) -> shuffled,
process-sharded -> a task's processor (radjax/data/processors.py) -> batches -> global
jax.Arrays."""
import grain
import jax

from radjax.data import source


def train_dataset(config, processor, split: str,
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


def eval_dataset(config, processor, split: str, batch_size: int,
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
