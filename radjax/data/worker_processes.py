"""Training batches made in Grain worker processes (config.data.worker_processes).

Read threads share the training process's GIL with the step's dispatch: the Python half
of each example (template, tokeniser calls, numpy) runs one at a time however many threads
decode. Worker processes each hold their own. The iterator's state is the in-process
iterator's, {'next_index': batches read}: a train stream is a function of the batch index
(radjax/data/pipeline.py), so a checkpoint resumes with any number of workers, or none.
"""
import copy
import signal
import sys

import grain
from absl import flags

from radjax.data import source


def _leave_stop_signals_to_the_trainer(worker_index: int, worker_count: int) -> None:
  """A signal sent to the whole process group (SLURM's preemption SIGTERM, Ctrl-C) would
  kill the workers first, and the trainer's next batch would raise instead of its
  checkpoint being saved. The trainer stops the workers itself when it closes the
  iterator (Grain kills those that do not exit)."""
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  _die_with_the_trainer()


def _die_with_the_trainer() -> None:
  """Ignoring SIGTERM, a worker whose trainer was killed (kill -9, OOM) would live on as an
  orphan: Linux sends it SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG)."""
  if not sys.platform.startswith('linux'):
    return
  import ctypes
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _stacked_in_shared_memory(ds: grain.MapDataset) -> grain.MapDataset:
  """A copy of `ds` whose batches a worker stacks straight into shared memory, when its
  last step is the batching (no copy of the batch into it afterwards: 0.5-0.9 ms of CPU
  per 224 px example, mostly page faults). A copy: in this process the same batches
  would be shared memory that nobody frees."""
  if not hasattr(ds, 'enable_shared_memory_output'):  # e.g. volume batches trimmed after
    return ds
  ds = copy.deepcopy(ds)
  ds.enable_shared_memory_output()
  return ds


class ProcessIterator(grain.DatasetIterator):
  """Batch k of `ds` (an infinite MapDataset of batches), k = 0, 1, ..., made by
  `processes` Grain workers (each with `threads` read threads) in turn. The workers
  start at the first batch or at start_prefetch(), from the restored index."""

  def __init__(self, ds: grain.MapDataset, threads: int, processes: int):
    super().__init__()
    self._ds, self._threads, self._processes = ds, threads, processes
    self._next_index = 0
    self._it = None

  def start_prefetch(self) -> None:
    if self._it is None:
      if not flags.FLAGS.is_parsed():  # tests, notebooks: Grain passes its flags to workers
        flags.FLAGS.mark_as_parsed()
      ds = _stacked_in_shared_memory(self._ds)
      ds = ds[self._next_index:] if self._next_index else ds
      options = grain.MultiprocessingOptions(num_workers=self._processes,
                                             per_worker_buffer_size=2)
      self._it = iter(ds.to_iter_dataset(source.read_options(self._threads)).mp_prefetch(
          options, worker_init_fn=_leave_stop_signals_to_the_trainer))
      self._it.start_prefetch()

  def __next__(self):
    self.start_prefetch()
    batch = next(self._it)
    self._next_index += 1
    return batch

  def get_state(self) -> dict:
    return {'next_index': self._next_index}

  def set_state(self, state: dict) -> None:
    self.close()
    self._next_index = int(state['next_index'])

  def close(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def __str__(self) -> str:
    return (f'ProcessIterator(processes={self._processes}, threads={self._threads}, '
            f'next_index={self._next_index})')
