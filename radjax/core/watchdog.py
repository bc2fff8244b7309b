"""A multi-process run ends together, and says why, when one of its processes fails.

The failing process publishes its message in JAX's coordination service (the key-value
store process 0 serves), under radjax/failed/<process id>; a daemon thread in every process
polls that directory (one RPC a second, for any number of processes) and hands another
process's failure to a callback that ends its own process. Without it the others wait in
the step's collective until JAX's heartbeat check (100 s) ends them with an error naming
neither the process nor the cause.

JAX (0.10.2) has no public API for the store: jax._src.distributed's client, as orbax uses.
"""
import atexit
import threading
import time

from jax._src import distributed as jax_distributed

PREFIX = 'radjax/'
FAILED = PREFIX + 'failed/'  # <process id>: its error message
ENDED = PREFIX + 'ended/'  # <process id>: ended on seeing another's failure
POLL_S = 1.0
LINGER_S = 10.0  # the longest process 0 keeps the store up for the others to read it
MAX_MESSAGE = 4000  # characters, from the end: a traceback's last lines name the error

_stop = threading.Event()
_thread = None


def _state():
  return jax_distributed.global_state


def identity() -> tuple[int, int]:
  """(this process's id, the process count) of the group joined, without starting a
  backend (jax.process_index() would); (0, 1) when none is."""
  state = _state()
  return (state.process_id, state.num_processes) if state.client else (0, 1)


def failure_of_another(dir_get, process_id: int) -> tuple[int, str] | None:
  """(process id, message) of the lowest-numbered other process that published a failure,
  from `dir_get(FAILED)` (the store's key_value_dir_get); None if none did or the store
  cannot be read (gone at a normal shutdown, or with process 0): never raises."""
  try:
    entries = dir_get(FAILED)
  except Exception:  # pylint: disable=broad-except
    return None
  failed = sorted((int(i), message) for key, message in entries
                  if (i := key.rpartition('/')[2]).isdigit() and int(i) != process_id)
  return failed[0] if failed else None


def watch(dir_get, process_id: int, stop: threading.Event,
          interval: float = POLL_S) -> tuple[int, str] | None:
  """Polls every `interval` s until another process's failure appears (returned) or `stop`
  is set (None)."""
  while not stop.wait(interval):
    if found := failure_of_another(dir_get, process_id):
      return found
  return None


def all_told(dir_get, process_id: int, num_processes: int) -> bool:
  """Whether every other process has failed or ended on seeing a failure (or, the store
  unreadable, False)."""
  try:
    done = {key.rpartition('/')[2] for key, _ in dir_get(PREFIX)}
  except Exception:  # pylint: disable=broad-except
    return False
  return all(str(i) in done for i in range(num_processes) if i != process_id)


def start(on_failure) -> threading.Thread | None:
  """In a multi-process run, a daemon thread that calls on_failure(process_id, message)
  when another process publishes its failure (`publish`); nothing for one process. Stopped
  at exit before JAX's own atexit hook (registered at its import) shuts the client down."""
  global _thread
  state = _state()
  if state.client is None or state.num_processes < 2 or _thread is not None:
    return None
  dir_get, me = state.client.key_value_dir_get, state.process_id

  def run():
    if found := watch(dir_get, me, _stop):
      on_failure(*found)

  _thread = threading.Thread(target=run, name='radjax-watchdog', daemon=True)
  _thread.start()
  atexit.register(stop)
  return _thread


def stop() -> None:
  """Ends the polling (a clean exit; before jax.distributed.shutdown)."""
  _stop.set()
  if _thread is not None and _thread is not threading.current_thread():
    _thread.join(timeout=2 * POLL_S)


def publish(directory: str, message: str) -> None:
  """Writes `message` under <directory><this process id> (FAILED or ENDED). The process
  that serves the store (process 0) then waits, up to LINGER_S, until every other process
  has failed or ended: its exit takes the store with it. Never raises, and never holds the
  caller much longer than LINGER_S, even with the store out of reach."""
  state = _state()
  client = state.client
  if client is None:
    return
  me, count, serves = state.process_id, state.num_processes, state.service is not None

  def tell():
    client.key_value_set(f'{directory}{me}', message[-MAX_MESSAGE:], allow_overwrite=True)
    end = time.monotonic() + LINGER_S
    while serves and time.monotonic() < end and not all_told(client.key_value_dir_get, me,
                                                                count):
      time.sleep(POLL_S / 4)

  def quietly():
    try:
      tell()
    except Exception:  # pylint: disable=broad-except
      pass  # the store out of reach: the caller leaves all the same, with its own message

  thread = threading.Thread(target=quietly, daemon=True)
  thread.start()
  thread.join(LINGER_S + 2)
