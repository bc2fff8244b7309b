"""Multi-controller runs: one process per host, one global mesh (`jax.distributed`).

`initialize` must run before anything touches devices (jax.devices(), a jit, an array).
Where the process group comes from, first match wins:
  1. explicit values (main.py --coordinator_address / --num_processes / --process_id),
  2. RADJAX_COORDINATOR / RADJAX_NUM_PROCESSES / RADJAX_PROCESS_ID,
  3. RADJAX_DISTRIBUTED=1: JAX reads the cluster (SLURM's variables, TPU VM metadata).
Nothing set, or one process: a no-op.
Joined, every process runs a watchdog (radjax/core/watchdog.py): a process that fails
(exit_failed) ends the others within seconds, with its message.
"""
import dataclasses
import errno
import logging as std_logging
import os
import socket
import sys
import threading

import jax
from absl import logging

from radjax.core import watchdog

JOIN_TIMEOUT_S = 300  # jax.distributed's default


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  coordinator_address: str = ''
  num_processes: int = 1
  process_id: int = 0
  auto: bool = False  # RADJAX_DISTRIBUTED=1: JAX detects the cluster


def _env_int(name: str, default: int) -> int:
  value = os.environ.get(name, '')
  try:
    return int(value) if value else default
  except ValueError:
    raise ValueError(f'{name}={value!r} is not an integer') from None


def process_group(coordinator_address: str = '', num_processes: int = 0,
                  process_id: int = -1) -> ProcessGroup:
  """The process group the flags (0 / -1 / '': unset) or the environment ask for."""
  if process_id < -1 or num_processes < 0:  # -1 / 0 mean unset; below that is a typo
    raise ValueError(f'--process_id={process_id} / --num_processes={num_processes}: '
                     'process ids count from 0, and a run has 1 or more processes')
  coordinator = coordinator_address or os.environ.get('RADJAX_COORDINATOR', '')
  count = num_processes or _env_int('RADJAX_NUM_PROCESSES', 0)
  index = process_id if process_id >= 0 else _env_int('RADJAX_PROCESS_ID', -1)
  if not (coordinator or count or index >= 0):
    return ProcessGroup(auto=os.environ.get('RADJAX_DISTRIBUTED') == '1')
  if count == 1 and index in (-1, 0):
    return ProcessGroup()
  missing = [name for name, unset in (('--coordinator_address (RADJAX_COORDINATOR)',
                                       not coordinator),
                                      ('--num_processes (RADJAX_NUM_PROCESSES)', count < 1),
                                      ('--process_id (RADJAX_PROCESS_ID)', index < 0))
             if unset]
  if missing:
    raise ValueError('a multi-process run needs all three of --coordinator_address, '
                     '--num_processes and --process_id; missing: ' + ', '.join(missing))
  if index >= count:
    raise ValueError(f'--process_id={index} must be below --num_processes={count}')
  _, _, port = coordinator.rpartition(':')
  if not (port.isdigit() and 0 < int(port) < 65536):
    raise ValueError(f'--coordinator_address={coordinator} (RADJAX_COORDINATOR): expected '
                     'host:port, e.g. 10.0.0.1:12345')
  return ProcessGroup(coordinator, count, index)


def initialize(coordinator_address: str = '', num_processes: int = 0,
               process_id: int = -1) -> ProcessGroup:
  """Joins the process group (see the module doc); a no-op for one process or when
  already joined (then the environment is not read again: SLURM's launcher passes the
  process id as a flag, not RADJAX_PROCESS_ID). Returns the group asked for, or joined."""
  if jax.distributed.is_initialized():
    watchdog.start(_another_failed)  # joined before radjax (SLURM auto-init): once only
    return ProcessGroup(coordinator_address, jax.process_count(), jax.process_index())
  group = process_group(coordinator_address, num_processes, process_id)
  if group.auto:
    try:
      jax.distributed.initialize()
    except (RuntimeError, ValueError) as e:  # JAX's own words name none of radjax's knobs
      raise ValueError(
          f'RADJAX_DISTRIBUTED=1: JAX found no cluster to join here (SLURM variables, a TPU '
          f'VM) ({e}); give --coordinator_address, --num_processes and --process_id (or '
          'RADJAX_COORDINATOR, RADJAX_NUM_PROCESSES, RADJAX_PROCESS_ID) instead') from e
  elif group.num_processes > 1:
    # JAX waits this long for every process, then aborts the process from C++ with a
    # message about another task: said here first, with the address.
    logging.info('process %d of %d: joining the coordinator at %s (waiting up to %d s for '
                 'all %d processes)', group.process_id, group.num_processes,
                 group.coordinator_address, JOIN_TIMEOUT_S, group.num_processes)
    if group.process_id == 0:
      _check_port_free(group)
    try:
      # 'deactivate': the group is the one given. JAX's detection would otherwise still
      # run to fill local_device_ids, and under SLURM it makes them [SLURM_LOCALID]: each
      # process of launch/slurm_gpu.sh (one a node) saw GPU 0 alone of its node's 8.
      jax.distributed.initialize(coordinator_address=group.coordinator_address,
                                 num_processes=group.num_processes,
                                 process_id=group.process_id,
                                 cluster_detection_method='deactivate',
                                 initialization_timeout=JOIN_TIMEOUT_S)
    except (RuntimeError, ValueError) as e:
      hint = (' (process 0 serves on that port: is it in use?)' if group.process_id == 0
              else '')
      raise ValueError(f'--coordinator_address={group.coordinator_address} (process '
                       f'{group.process_id} of {group.num_processes}): could not join the '
                       f'process group{hint}: {e}') from e
  watchdog.start(_another_failed)  # nothing for one process
  return group


def _check_port_free(group: ProcessGroup) -> None:
  """Process 0 serves the coordinator on the address's port. Checked here: jaxlib, failing
  to bind a port in use, has raised or crashed the process (SIGSEGV) by version."""
  port = int(group.coordinator_address.rpartition(':')[2])
  families = [(socket.AF_INET, '0.0.0.0')] + [(socket.AF_INET6, '::')] * socket.has_ipv6
  for family, host in families:
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, port))
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        raise ValueError(f'--coordinator_address={group.coordinator_address} (process 0 of '
                         f'{group.num_processes}): port {port} is in use here, and process 0 '
                         'serves the process group on it; choose a free port') from e
      # Other errors (no IPv6 on this host): left for JAX to meet.


def log_to_file(workdir: str) -> str:
  """Also writes this process's absl log to <workdir>/logs/process_<i>.log (every
  process: the other hosts' errors are otherwise only on their own terminals)."""
  log_dir = os.path.join(workdir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  path = os.path.join(log_dir, f'process_{jax.process_index()}.log')
  logger = logging.get_absl_logger()
  if any(getattr(h, 'baseFilename', None) == os.path.abspath(path) for h in logger.handlers):
    return path
  handler = std_logging.FileHandler(path)
  handler.setFormatter(logging.PythonFormatter())
  logger.addHandler(handler)
  return path


def write_to_log_file(message: str) -> None:
  """`message` as an ERROR line into this process's log file (log_to_file) alone: the
  caller prints it to the terminal itself."""
  logger = logging.get_absl_logger()
  for handler in logger.handlers:
    if isinstance(handler, std_logging.FileHandler):
      handler.emit(logger.makeRecord(logger.name, std_logging.ERROR, __file__, 0, message,
                                     None, None))


def is_multi_process() -> bool:
  return watchdog.identity()[1] > 1  # no backend started: a peer may not have its own yet


_ENDING = threading.Lock()  # held, never released, by whichever path ends the process


def exit_failed(message: str) -> None:
  """Ends this process with `message` on stderr and exit status 1. In a multi-process run
  it leaves at once (sys.exit's clean shutdown waits at JAX's shutdown barrier, 300 s),
  after publishing `message`: the other processes' watchdogs end them within seconds,
  saying which process failed and why (they would otherwise wait in a collective until
  JAX's heartbeat check, 100 s, ends them with an error that names neither)."""
  if not is_multi_process():
    sys.exit(message)
  print(message, file=sys.stderr)
  _flush()
  with _ENDING:  # this process's watchdog, seeing another failure now, leaves it to us
    watchdog.publish(watchdog.FAILED, message)
    os._exit(1)


def _another_failed(process_id: int, message: str) -> None:
  """The watchdog's callback: process `process_id` failed with `message` (a traceback: its
  last line here, the whole in the log file)."""
  with _ENDING:
    try:
      me, count = watchdog.identity()
      lines = message.strip().splitlines() or ['']
      text = (f'error: process {process_id} of {count} failed: '
              f'{lines[-1].removeprefix("error: ")}; ending this process ({me}) too')
      print(text, file=sys.stderr)
      write_to_log_file(text if len(lines) == 1 else f'{text}. Its traceback:\n{message}')
      _flush()
      watchdog.publish(watchdog.ENDED, text)
    finally:
      os._exit(1)


def _flush() -> None:
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
