"""orbax CheckpointManager over {train state, Grain iterator}: async, atomic, keep-N.

What a checkpoint may never be: non-finite (`save` refuses a state with NaN/inf), or a
reason a rerun fails (`restore_latest` sets a checkpoint that does not restore aside,
in `<workdir>/checkpoints_damaged/`, and falls back to the next older one).
"""
import contextlib
import json
import logging as pylogging
import os
import re
import signal
import sys
import threading

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

DAMAGED_DIR = 'checkpoints_damaged'
# Replicated arrays below this size are written whole by one replica. orbax otherwise
# splits every replicated array across its replicas, one slice op per distinct shape:
# the first save of a 180-leaf state on 8 devices compiled for 23 s vs 0.35 s (see
# BENCHMARKS.md); a slice only pays off for big arrays.
REPLICA_PARALLEL_MIN_BYTES = 1 << 20


# Step dirs radjax has reported as not restoring (see _quiet_failed_reads).
_REPORTED_DAMAGED: set[str] = set()


class _ReportedDamageFilter(pylogging.Filter):
  def filter(self, record):
    message = record.getMessage()
    return not (message.startswith('Task exception was never retrieved')
                and any(d in message for d in _REPORTED_DAMAGED))


def _quiet_failed_reads() -> None:
  """Reading a damaged checkpoint, orbax's asyncio.run fails and closes its loop while
  tensorstore still has reads in flight: each then printed an 'Event loop is closed'
  traceback (an unraisable exception), and asyncio logged the other reads' errors as
  'never retrieved', after the error radjax reports. Those are dropped (the latter only
  for checkpoints reported); any other goes on as before."""
  previous = sys.unraisablehook
  if getattr(previous, 'radjax_quiet', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      previous(unraisable)

  hook.radjax_quiet = True
  sys.unraisablehook = hook
  pylogging.getLogger('asyncio').addFilter(_ReportedDamageFilter())


def _register_array_handler():
  # orbax warns (on stderr, before absl is set up) that this overrides its own handler;
  # the absl logger is muted for that call only, its level and handlers left alone.
  absl_logger = pylogging.getLogger('absl')
  was_disabled, absl_logger.disabled = absl_logger.disabled, True
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES), override=True)
  finally:
    absl_logger.disabled = was_disabled


_register_array_handler()


class NonFiniteStateError(RuntimeError):
  """A state with NaN/inf values was about to become a checkpoint."""


def _on_any_process(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


class CheckpointError(RuntimeError, ValueError):  # ValueError: main.py prints one line
  """No checkpoint of a workdir restores."""


def _not_damage(e: BaseException) -> bool:
  """A restore that failed for want of memory or permission, not for the files."""
  if isinstance(e, (MemoryError, PermissionError)):
    return True
  text = str(e)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'Permission denied' in text


@jax.jit
def _all_finite(leaves):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] or [jnp.bool_(True)]))


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of `tree` is finite (one jitted reduction)."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_all_finite(leaves)) if leaves else True


class _SigtermFlag:
  """SIGTERM (a scheduler's preemption notice) asks the loop to save and stop at the end of
  the current step; a second SIGTERM terminates at once."""

  def __init__(self):
    self.received = False
    self._previous = None
    self._installed = False

  def install(self):
    if threading.current_thread() is not threading.main_thread():
      return
    self._previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, self._handle)
    self._installed = True

  def uninstall(self):
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
      self._installed = False

  def _handle(self, signum, frame):
    del frame
    if self.received:  # asked twice: stop now
      self.uninstall()
      signal.raise_signal(signum)
      return
    self.received = True
    logging.warning('SIGTERM: saving a checkpoint after the current step, then exiting')


class Checkpointer:

  def __init__(self, workdir: str, keep: int, use_async: bool = True,
               handle_sigterm: bool = False):
    """`keep`: checkpoints kept (0 keeps all). `handle_sigterm` (the training loop's): once
    the loop first asks `reached_preemption` or saves, SIGTERM makes it true (single-process
    runs; multi-host runs use orbax's preemption sync, which JAX's distributed runtime
    drives), and unfinished saves of an earlier run are removed."""
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    if keep < 0:
      raise ValueError(f'config.train.keep_checkpoints={keep} must be >= 0 (0 keeps all)')
    # The training run's own (handle_sigterm) removes the half-written step dirs a kill
    # left (a SIGTERM save at a step never saved again stayed for good); a reader must not
    # (a training run's write in progress).
    options = ocp.CheckpointManagerOptions(max_to_keep=keep or None, create=True,
                                           enable_async_checkpointing=use_async,
                                           cleanup_tmp_directories=handle_sigterm)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.checkpoint.CheckpointHandler()})

    self._sigterm = _SigtermFlag()
    self._handle_sigterm = handle_sigterm and jax.process_count() == 1

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    """Saves (asynchronously if so configured); a non-finite state is refused."""
    self._watch_sigterm()
    if not all_finite(state):
      raise NonFiniteStateError(f'step {step}: the state has NaN/inf values; it is not saved '
                                f'as a checkpoint in {self.directory}')
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state (with the target's shardings) and, in place, the iterator."""
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self.manager.restore(step, args=ocp.args.Composite(**items))['state']

  def restore_latest(self, abstract_state, data_iterator=None):
    """(state, step) of the newest checkpoint that restores; (None, None) when there is none.

    A checkpoint written by another number of processes resumes from their merged iterator
    state (equal values kept, dicts such as the record log or the packed shards' states
    merged): radjax's streams mean the same global position on any count
    (radjax/data/pipeline.py _batches). An iterator with `refuses(states) -> reason | None`
    can say that this count cannot take them (a packed stream whose shards it cannot
    share): an error naming both counts, with nothing moved.

    A checkpoint that fails to restore (a truncated file, a missing manifest or iterator
    state) is moved, never deleted, to `<workdir>/checkpoints_damaged/<step>`, with a
    warning that says why, and the next older one is tried. Raises CheckpointError when
    none restores (a rerun then starts from scratch; the damaged ones stay aside), and at
    once, moving nothing, when a read fails for want of memory or permission.
    """
    skipped = []
    _quiet_failed_reads()
    for step in sorted(self.manager.all_steps(), reverse=True):
      saved_by = None if data_iterator is None else self._other_process_count(step)
      # A process's own iterator file is checked (and agreed on) before orbax restores,
      # whose collectives one process failing alone would leave the others waiting in.
      merged, reason = None, None
      if saved_by:
        merged, reason = self._merged_iterator_state(step, saved_by, data_iterator)
      elif data_iterator is not None:
        reason = self._iterator_file_problem(step)
      if _on_any_process(reason is not None):
        restored, reason = None, reason or 'another process cannot read its iterator state'
      else:
        try:
          if saved_by:
            restored, reason = self.restore(step, abstract_state), None
            data_iterator.set_state(merged)
            logging.info('checkpoint %d was written by %d process(es); this run has %d and '
                         'goes on from their merged iterator state', step, saved_by,
                         jax.process_count())
          else:
            restored, reason = self.restore(step, abstract_state, data_iterator), None
        except Exception as e:  # orbax/tensorstore/grain raise many types for damaged files
          restored, reason = None, f'{type(e).__name__}: {" ".join(str(e).split())[:300]}'
          if _not_damage(e):  # set aside, every older one would follow it for no fault
            raise CheckpointError(f'checkpoint {step} in {self.directory} could not be '
                                  f'read ({reason}); this is no damage, so nothing was '
                                  'moved: free memory or fix permissions and rerun') from e
          _REPORTED_DAMAGED.add(os.path.join(self.directory, str(step)))
        # Every process takes the same step.
        if not _on_any_process(reason is not None):
          return restored, step
      reason = reason or 'another process could not restore it'
      aside = self._set_aside(step)
      logging.warning('checkpoint %d does not restore (%s); moved to %s, trying an older one',
                      step, reason, aside)
      skipped.append(f'{step} ({reason}) -> {aside}')
    if skipped:
      raise CheckpointError(f'no checkpoint in {self.directory} restores; set aside: '
                            + '; '.join(skipped) + '. Rerun to start from scratch.')
    return None, None

  def _other_process_count(self, step: int) -> int | None:
    """The number of processes that wrote `step`'s iterator states when it is not this
    run's (None when it is)."""
    counts, data_dir = set(), self._data_dir(step)
    for name in os.listdir(data_dir) if os.path.isdir(data_dir) else ():
      m = re.fullmatch(r'process_\d+-of-(\d+)\.json', name)
      if m:
        counts.add(int(m.group(1)))
    if not counts or jax.process_count() in counts:
      return None
    return max(counts)

  def _data_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step), 'data')

  def _merged_iterator_state(self, step: int, count: int, data_iterator
                             ) -> tuple[dict | None, str | None]:
    """(the merged iterator state of `step`'s `count` per-process files, None), or (None,
    why they cannot be read or merged). States the iterator refuses are no damage, only
    not for this run: a CheckpointError saying so, with nothing moved (every process sees
    the same files, so all of them raise)."""
    states = []
    for i in range(count):
      path = os.path.join(self._data_dir(step), f'process_{i}-of-{count}.json')
      try:
        with open(path) as f:
          states.append(json.load(f))
      except (OSError, ValueError) as e:
        return None, f'{path}: {type(e).__name__}: {" ".join(str(e).split())[:200]}'
    refuses = getattr(data_iterator, 'refuses', None)
    why = refuses(states) if refuses is not None else None
    if why:
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} was written by {count} process(es) and '
          f'this run has {jax.process_count()}: {why}; nothing was moved. Run with {count} '
          'processes, or start a new --workdir from its weights '
          f'(config.model.<part>.init_from={self.workdir})')
    try:
      return merge_iterator_states(states), None
    except ValueError as e:
      return None, f'the iterator states of its {count} processes: {e}'

  def _iterator_file_problem(self, step: int) -> str | None:
    """Why this process's Grain iterator state of `step` cannot be read, else None."""
    path = os.path.join(self._data_dir(step),
                        f'process_{jax.process_index()}-of-{jax.process_count()}.json')
    try:
      with open(path) as f:
        json.load(f)
    except (OSError, ValueError) as e:
      return f'{path}: {type(e).__name__}: {" ".join(str(e).split())[:200]}'
    return None

  def _set_aside(self, step: int) -> str:
    """Moves a step's directory to <workdir>/checkpoints_damaged/<step>[.N]; returns where."""
    src = os.path.join(self.directory, str(step))
    dest_dir = os.path.join(self.workdir, DAMAGED_DIR)
    dest, n = os.path.join(dest_dir, str(step)), 1
    if jax.process_index() == 0:
      os.makedirs(dest_dir, exist_ok=True)
      while os.path.exists(dest):
        dest, n = os.path.join(dest_dir, f'{step}.{n}'), n + 1
      os.rename(src, dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f'radjax_set_aside_{step}')
    self.manager.reload()
    return dest

  def _watch_sigterm(self):
    if self._handle_sigterm:  # from the loop's first step (or save) until close()
      self._handle_sigterm = False
      self._sigterm.install()

  def reached_preemption(self, step: int) -> bool:
    self._watch_sigterm()
    return self._sigterm.received or self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self._sigterm.uninstall()
    self.manager.close()


# The record log's key in an iterator state (radjax/data/source.py IteratorWithRecordLog.KEY):
# the records a process stepped over, where -> why.
RECORD_LOG_KEY = 'radjax_record_log'


def merge_iterator_states(states: list, where: str = '') -> dict:
  """One state from several processes' iterator states: a key's value where all agree,
  dicts (a record log) merged key by key (a nested key may be in some only); differing
  values (positions) or a top-level key missing somewhere raise ValueError naming it. A
  record in two processes' record logs keeps the first's reason: a later epoch hands it to
  another process, which may draw another task for it (another token count in the message)."""
  if all(isinstance(s, dict) for s in states):
    keys = sorted(set().union(*states))
    out = {}
    for k in keys:
      present = [s[k] for s in states if k in s]
      if len(present) < len(states) and not where:
        raise ValueError(f'{k} is missing in some: {[s.get(k) for s in states]}')
      if all(isinstance(v, dict) for v in present):
        out[k] = merge_iterator_states(present, f'{where}{k}.')
      elif any(v != present[0] for v in present) and not where.startswith(RECORD_LOG_KEY + '.'):
        raise ValueError(f'{where}{k} differs: {[s.get(k) for s in states]}')
      else:
        out[k] = present[0]
    return out
  raise ValueError(f'{where or "the state"} is not a dict in every process')


def save_for_inspection(path: str, state):
  """A one-off synchronous save outside the manager (e.g. the state that went NaN)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, state, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()


def restore_params(directory: str, step: int, path: tuple[str, ...] = (), target=None):
  """Only `params/<path...>` of a saved state (a training state or an imported one).

  `target` (ShapeDtypeStructs with shardings) restores each leaf straight into its
  shards; without it leaves come back as host numpy arrays. Optimizer moments are
  never read.
  """
  item_dir = os.path.join(directory, str(step), 'state')
  _quiet_failed_reads()
  try:
    with _item_reader(item_dir) as checkpointer:
      return _restore_params(checkpointer, item_dir, path, target)
  except Exception:
    _REPORTED_DAMAGED.add(item_dir)
    raise


def saved_state_keys(directory: str, step: int) -> set[str] | None:
  """The top-level keys of a step's saved state ({'params'} for an imported model, a
  training state's {'step', 'params', 'opt_state', 'rng'}); None where its tree metadata
  does not read (a damaged checkpoint: restore_latest says why)."""
  item_dir = os.path.join(directory, str(step), 'state')
  try:
    with _item_reader(item_dir) as checkpointer:
      metadata = checkpointer.metadata(item_dir).item_metadata
  except Exception:  # orbax/tensorstore raise many types for damaged files
    return None
  tree = getattr(metadata, 'tree', None)
  return set(tree) if isinstance(tree, dict) else None


@contextlib.contextmanager
def _item_reader(item_dir: str):
  """A PyTreeCheckpointer for reading one item directory of a step."""
  # The step's _CHECKPOINT_METADATA is one level up: orbax, reading the item directory
  # alone, warned on every healthy read that the item has none.
  absl_logger = pylogging.getLogger('absl')
  no_item_metadata = _MessageFilter(
      f'Metadata file does not exist: {os.path.join(item_dir, "_CHECKPOINT_METADATA")}')
  absl_logger.addFilter(no_item_metadata)
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      yield checkpointer
  finally:
    absl_logger.removeFilter(no_item_metadata)


class _MessageFilter(pylogging.Filter):
  def __init__(self, message: str):
    super().__init__()
    self.message = message

  def filter(self, record) -> bool:
    return record.getMessage() != self.message


def _restore_params(checkpointer, item_dir: str, path: tuple[str, ...], target):
  metadata = checkpointer.metadata(item_dir).item_metadata
  if metadata is None:  # orbax logs why and returns None: a missing or damaged tree index
    raise ValueError(f'{item_dir}: its tree metadata (_METADATA, manifest.ocdbt) does not '
                     'read')
  node, keys = metadata.tree, ('params', *path)
  for k in keys:
    if not isinstance(node, dict) or k not in node:
      raise KeyError(f'{item_dir}: no {"/".join(keys)} in the checkpoint')
    node = node[k]
  if target is None:
    target = node
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), node)
  else:
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  for k in reversed(keys):
    target, restore_args = {k: target}, {k: restore_args}
  out = checkpointer.restore(
      item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                            partial_restore=True))
  for k in keys:
    out = out[k]
  return out
