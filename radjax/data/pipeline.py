"""The Grain pipeline: a dataset's records (radjax/data/source.py) -> shuffled,
process-sharded -> a task's processor (radjax/data/processors.py) -> mixed with other
datasets (radjax/data/mixture.py) -> batches -> global jax.Arrays."""
import functools

import grain
import jax
import numpy as np

from radjax.data import instructions, mixture, packing, source, volumes
from radjax.data import worker_processes as worker_processes_lib


def train_dataset(config, make_processor, split: str,
                  process_index: int | None = None, process_count: int | None = None
                  ) -> grain.MapDataset:
  """Infinite, reshuffled every epoch, this process's slice, per-process batches.

  make_processor(tasks[, kind]) -> processor(record, rng) builds the processor for a list
  of instruction tasks (a Task's `processor`; kind 'volume' for volume components).
  Without config.data.mixture: config.data.dir with config.data.tasks; with one, each
  component is its own stream (shuffled, processed), grain mixes them by weight
  (radjax/data/mixture.py) and this process takes its slice of the mix. Each example gets a
  host-only `source`: its component's index in mixture.names(config) (0 without one).
  Image and volume components are batched apart and the batches mixed by
  config.data.volume_batch_share, so no batch holds both kinds.

  Every transform is a function of (seed, record index), so the iterator state
  (one integer) is all a resumed run needs to continue the same stream. With
  config.data.pack the examples are packed into rows first (radjax/data/packing.py; an
  IterDataset whose state is each shard packer's).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if config.train.batch_size % process_count:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible '
                     f'by {process_count} processes')
  log = source.RecordLog(config.data.get('max_skipped_records', 0))
  comps = mixture.components(config)
  if not comps:
    records = source.open_split(config.data.dir, split)
    processor = make_processor(tuple(config.data.tasks))
    _check_tasks(processor, 'config.data.tasks')
    ds = _stream(config, records, config.seed, processor, 0, log)
    return _batches(config, ds, 'image', process_index, process_count, _image_id(processor))
  batched = {}
  kinds = mixture.by_kind(comps)
  for kind, items in kinds.items():
    records = [_capped(_training_records(c, split), c) for _, c in items]
    weights = mixture.weights([c for _, c in items], [len(r) for r in records])
    # Both kinds: each named (a processor's default is the eval dataset's kind, which
    # processed the 2D components of a mixture evaluated on volumes as volumes).
    make = (make_processor if len(kinds) == 1 and kind == 'image'
            else functools.partial(make_processor, kind=kind))
    processors = [make(c.tasks) for _, c in items]
    for (_, c), p in zip(items, processors):
      _check_tasks(p, f'{c.knob}.tasks')
    streams = [_stream(config, r, c.seed, p, i, log)
               for (i, c), r, p in zip(items, records, processors)]
    ds = streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights)
    # Mixed, then sliced (_batches): element i of the mix is a function of i alone (and
    # lazy), so the global stream, and what a checkpoint's batch index means, is the same
    # on any number of processes.
    batched[kind] = _batches(config, ds, kind, process_index, process_count,
                             _image_id(processors[0]))
  if len(batched) == 1:
    return next(iter(batched.values()))
  share = config.data.volume_batch_share
  if not 0 < share < 1:
    raise ValueError(f'config.data.volume_batch_share={share}: the mixture has image and '
                     'volume components, so it must be in (0, 1)')
  return grain.MapDataset.mix([batched['image'], batched['volume']], [1 - share, share])


def _training_records(comp: mixture.Component, train_split: str) -> source.ShardSource:
  """A component's splits (default: the run's train split) as one set, in split order."""
  files = []
  for split in comp.splits or (train_split,):
    files += source.split_files(comp.dir, split, f'{comp.knob}.dir')
  return source.ShardSource(files)


def _capped(records, comp: mixture.Component):
  """A component's records, or the subset its max_records keeps (mixture.kept_records)."""
  keep = mixture.kept_records(comp, len(records))
  return records if keep is None else source.SubsetSource(records, keep)


def _image_id(processor) -> int | None:
  """The image placeholder id of a processor's examples, None without image slots."""
  if getattr(processor, 'images', None) is None:
    return None
  return processor.encoder.image_id


def _batches(config, ds: grain.MapDataset, kind: str, process_index: int, process_count: int,
             image_id: int | None):
  """This process's batches of one kind from the global stream `ds`; volume batches trimmed
  to their depth bucket on one process (on several the model picks it: the whole batch's,
  VLM._volume_slots); image (and text) examples packed into rows first with
  config.data.pack.

  A checkpoint resumes on another number of processes: unpacked, step k is elements
  [k B, (k+1) B) of the global stream on any number P of processes (process p takes p,
  p+P, ...), so every process's iterator state is the same batch index; packed, step k is
  the k-th packed group of each of the stream's shards (radjax/data/packing.py), on any P
  that divides the shard count."""
  knob, size = batch_size(config, kind)
  if size < 1 or size % process_count:
    raise ValueError(f'{knob}={size} must be a positive multiple of {process_count} processes')
  if config.data.get('pack', False):
    if kind != 'image':
      raise ValueError("config.data.pack=True packs text and 2D-image examples only; the "
                       "mixture has a 'volume' component")
    return packing.sharded(config, ds, process_index, process_count, image_id)
  ds = ds[process_index::process_count].batch(size // process_count, drop_remainder=True)
  if kind == 'volume':
    max_depth = max_slices(config)
    buckets = tuple(config.data.depth_buckets)
    patch = config.model.vision.get('depth_patch_size', 1)
    if any(b < 1 or b > max_depth or b % patch for b in buckets):
      raise ValueError(f'config.data.depth_buckets={buckets}: each must be in [1, '
                       f'{max_depth}] (config.data.max_slices, else '
                       'config.model.vision.max_depth) and a multiple of '
                       f'config.model.vision.depth_patch_size={patch}')
    # Several processes: each sees only its share of the batch, so the model picks the
    # depth and the in-plane size from the whole batch (VLM._volume_slots).
    if process_count == 1:
      ds = ds.map(functools.partial(volumes.trim_depth, buckets=buckets, max_depth=max_depth))
    plane = volume_image_size(config)
    if process_count == 1 and plane != config.model.vision.image_size:
      ds = ds.map(functools.partial(volumes.shrink_plane, size=plane, depth_patch=patch))
  return ds


def batch_size(config, kind: str) -> tuple[str, int]:
  """(knob, global size) of a training batch of `kind`: 'image' (2D images, or text)
  batches of config.train.batch_size, 'volume' batches of config.data.volume_batch_size."""
  if kind == 'image':
    return 'config.train.batch_size', config.train.batch_size
  return 'config.data.volume_batch_size', config.data.volume_batch_size


def max_slices(config) -> int:
  """The depth a volume batch holds: config.data.max_slices, else the tower's max_depth."""
  v, cap = config.model.vision, config.data.get('max_slices', 0)
  tower = v.get('max_depth', 0)
  if not cap:
    return tower
  if cap > tower or cap % v.get('depth_patch_size', 1):
    raise ValueError(f'config.data.max_slices={cap}: at most config.model.vision.max_depth='
                     f'{tower} and a multiple of its depth_patch_size '
                     f"{v.get('depth_patch_size', 1)}")
  return cap


def volume_image_size(config) -> int:
  """The in-plane size of a training volume batch deeper than one depth patch:
  config.data.volume_image_size, else the tower's image_size."""
  v, size = config.model.vision, config.data.get('volume_image_size', 0)
  if not size:
    return v.image_size
  if size > v.image_size or size % v.patch_size:
    raise ValueError(f'config.data.volume_image_size={size}: at most config.model.vision.'
                     f'image_size={v.image_size} and a multiple of its patch_size '
                     f'{v.patch_size}')
  if size < v.image_size and jax.process_count() > 1 and not config.runtime.get(
      'volume_slot_switch', True):
    raise ValueError(f'config.data.volume_image_size={size} on several processes needs '
                     'config.runtime.volume_slot_switch=True (the model resizes there)')
  return size


def many_images_slices(config) -> int:
  """The slices a training sample of more than config.data.many_images images keeps at
  most: config.data.many_images_max_slices, else max_slices(config)."""
  cap, most = config.data.get('many_images_max_slices', 0), max_slices(config)
  if not cap:
    return most
  patch = config.model.vision.get('depth_patch_size', 1)
  if cap > most or cap % patch:
    raise ValueError(f'config.data.many_images_max_slices={cap}: at most {most} '
                     '(config.data.max_slices, else config.model.vision.max_depth) and a '
                     f'multiple of config.model.vision.depth_patch_size={patch}')
  return cap


def _stream(config, records, seed: int, processor, index: int, log: source.RecordLog
            ) -> grain.MapDataset:
  """One dataset's examples, the global stream (train_dataset takes this process's slice):
  shuffled, repeated, processed; bad and too-long records stepped over
  (source.skip_records)."""
  ds = grain.MapDataset.source(records).seed(seed)
  if config.data.shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(None)
  # The rng draws each record's task and wording; images use it only when
  # config.data.augment (radjax/data/processors.py ImageSlots). It is a function of the
  # element's index in the global stream, and the slice comes after it (map datasets are
  # lazy: a process still processes only its own elements), so N processes together see
  # the examples one process sees. The seed is the one grain derived for this map when
  # the slice came before it, so one-process streams are unchanged.
  ds = ds.random_map(source.locate_errors(processor),
                     seed=_map_seed(seed, 4 if config.data.shuffle else 3))
  return source.skip_records(ds, log).map(
      lambda example: {**example, 'source': np.int32(index)})


def _map_seed(seed: int, depth: int) -> int:
  """grain's default seed for a random map `depth` datasets below `.seed(seed)`."""
  return int(np.random.SeedSequence([seed, depth]).generate_state(1, dtype=np.uint32)[0])


def _check_tasks(processor, key: str) -> None:
  """An instruction processor's task names, checked before any record is read (the
  error names the knob they came from)."""
  tasks = getattr(processor, 'tasks', None)
  if tasks is not None:
    instructions.check_tasks(tasks, key)


def eval_dataset(config, processor, split: str, batch_size: int,
                 process_index: int | None = None, process_count: int | None = None,
                 records=None) -> grain.MapDataset:
  """One ordered pass over `records` (default: split `split` of mixture.eval_dir(config),
  config.data.dir or the first mixture component's when that is ''; an evaluator's own,
  radjax/eval/evaluators/eval_sets.py), no augmentation. Every record counts once: the
  last batch is padded, and padding rows (source.EVAL_MASK 0: past the end, or in place
  of a too-long record, which is logged) have their loss and label weights zeroed."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if records is None:
    records = source.open_split(mixture.eval_dir(config), split)
  ds = grain.MapDataset.source(records).map(
      source.locate_errors(lambda raw: processor(raw, None)))
  ds = source.eval_pass(ds, source.RecordLog(config.data.get('max_skipped_records', 0)),
                        batch_size)
  return ds[process_index::process_count].batch(batch_size // process_count,
                                                 drop_remainder=True).map(_unweight_padding)


# The weights that the tasks' held-out losses and the label evaluator count rows by.
_ROW_WEIGHTS = ('loss_mask', 'label_mask')


def _unweight_padding(batch: dict) -> dict:
  keep = batch[source.EVAL_MASK]
  for k in _ROW_WEIGHTS:
    if k in batch:
      w = batch[k]
      batch[k] = w * keep.reshape(-1, *[1] * (w.ndim - 1)).astype(w.dtype)
  return batch


def host_scalars(batch: dict, ds: grain.MapDataset | None) -> dict:
  """What the loop logs about the data, read from this process's host batch (never sent
  to devices): the fraction of examples truncated and too-long records dropped so far in
  this process (when `ds` was read here). A packed batch's host keys hold -1 in the
  example slots its rows leave empty; it adds examples per row and padding. (Examples per
  mixture component are the whole batch's: radjax/train/examples_seen.py.)"""
  truncated = np.asarray(batch.get('truncated', 0))
  packed = 'segment_ids' in batch
  if packed:
    truncated = truncated[truncated >= 0]
  out = {'data/truncated': float(np.mean(truncated)) if truncated.size else 0.0}
  if packed:
    out.update(packing.host_scalars(batch))
  log = None if ds is None else source.record_log(ds)
  if log is not None:
    for reason in ('too_long', 'no_task'):
      out[f'data/dropped_{reason}'] = float(len(log.dropped.get(reason, {})))
  return out


def make_iterator(ds: grain.MapDataset, worker_threads: int, worker_processes: int = 0):
  """A checkpointable iterator; `worker_threads` threads read and decode ahead of the step,
  0 reads in the calling thread (a packed dataset, already an IterDataset, has its read
  threads before the packer). Not iter(ds): that is grain's 16 threads and 500 batches
  read ahead. `worker_processes` > 0: that many processes make the batches, each with
  `worker_threads` threads (radjax/data/worker_processes.py)."""
  if isinstance(ds, grain.IterDataset):
    if worker_processes:
      raise ValueError(f'config.data.worker_processes={worker_processes} with '
                       'config.data.pack=True: packed rows depend on what each process '
                       'reads; use config.data.worker_threads')
    return _with_record_log(iter(ds), ds)
  if worker_processes:  # each worker keeps its own RecordLog: not checkpointed
    return worker_processes_lib.ProcessIterator(ds, worker_threads, worker_processes)
  return _with_record_log(iter(ds.to_iter_dataset(source.read_options(worker_threads))), ds)


def _with_record_log(it, ds):
  """`it` checkpointing the RecordLog of `ds` too, when it has one."""
  log = source.record_log(ds)
  return it if log is None else source.IteratorWithRecordLog(it, log)


def to_global_from_whole(batch: dict, shardings: dict) -> dict:
  """Like to_global, for a batch that every process holds whole (the same prompts on every
  host, as generation has): each process places the rows of its own shards."""
  return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index])
          for k, v in batch.items() if k in shardings}


def to_host(x) -> np.ndarray:
  """A global jax.Array whole on this host; with several processes an all-gather (every
  process must call it)."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_global(batch: dict, shardings: dict) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded over the batch mesh axes; keys
  without a sharding (host-only: `source`, `truncated`) stay on the host."""
  return {k: jax.make_array_from_process_local_data(shardings[k], v)
          for k, v in batch.items() if k in shardings}
