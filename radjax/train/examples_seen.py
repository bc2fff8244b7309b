"""The examples and token slots the training steps read, over every process's rows.

A process holds only its rows of the global batch, and the processes' counts differ (a
packed row holds 1, 2, ... examples; a mixture's components fall unevenly on them), so
process 0's count times the process count is not the batch's. Each row's counts go to
the devices like a batch key and are summed there; the loop reads the sums one step late,
with the step's metrics, so no process waits for another.
"""
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from radjax.core import sharding as sharding_lib
from radjax.data import packing


def row_counts(host_batch: dict, names: tuple[str, ...] = ()) -> np.ndarray:
  """[rows, 1 + len(names)] int32 of a host batch: each row's examples (a packed row's
  segments), then how many of them come from each mixture component (`source`; -1 marks a
  packed row's empty slots)."""
  if 'segment_ids' in host_batch:
    examples = packing.examples_per_row(host_batch)
  else:  # a mixture's volume batches have their own row count, a classifier no text
    examples = np.ones(len(next(v for v in host_batch.values() if np.ndim(v))), np.int32)
  columns = [examples]
  if names and 'source' in host_batch:
    sources = np.asarray(host_batch['source']).reshape(len(examples), -1)
    columns += [np.sum(sources == i, axis=1) for i in range(len(names))]
  return np.stack(columns, axis=1).astype(np.int32)


class Seen:
  """What the steps since the last log read: `add` each step, `take` at a logged one."""

  def __init__(self, mesh, rules, names: tuple[str, ...] = ()):
    self.names = tuple(names)
    self._rows = sharding_lib.batch_sharding(mesh, rules, 2)
    self._sum = jax.jit(lambda rows: jnp.sum(rows, axis=0),
                        out_shardings=sharding_lib.replicated(mesh))
    self._counts, self._tokens = [], 0

  def add(self, host_batch: dict, batch: dict) -> None:
    """One step: `host_batch` this process's rows, `batch` the global arrays sent."""
    rows = jax.make_array_from_process_local_data(self._rows,
                                                  row_counts(host_batch, self.names))
    self._counts.append(self._sum(rows))  # dispatched, not read
    if 'tokens' in batch:
      self._tokens += int(np.prod(batch['tokens'].shape))  # the global shape: no read

  def take(self, seconds: float) -> Callable[[], dict]:
    """Ends the window: a function that reads its scalars (waiting for its steps' sums):
    examples and token slots per second, and the last step's examples per component."""
    counts, tokens, names = self._counts, self._tokens, self.names
    self._counts, self._tokens = [], 0

    def read() -> dict:
      host = np.stack(jax.device_get(counts))  # [steps, 1 + len(names)]
      out = {'train/examples_per_sec': float(host[:, 0].sum()) / seconds}
      if tokens:
        out['train/tokens_per_sec'] = tokens / seconds
      out.update({f'data/examples/{n}': float(c) for n, c in zip(names, host[-1, 1:])})
      return out
    return read
