"""The host's malloc for CPU steps (`config.runtime.host_allocator`), chosen at process start.

XLA:CPU allocates a step's temporaries afresh every step, as one block (125 MB at the
demo's shapes, ~1.6 GB at the 43M-parameter bench shape), from its worker threads. glibc
serves a block that large with mmap and returns it with munmap when the step ends, so every
step faults all of it in again and the kernel zeroes it (BENCHMARKS.md, sessions 14-15, 18):
- 'mimalloc' (default): mimalloc (the `cmeel-mimalloc` wheel) preloaded, told never to hand
  freed memory back (MIMALLOC_PURGE_DELAY=-1). The next step reuses the block: no faults,
  no zeroing, and no idle-time loss on VMs whose host reclaims free guest memory. Threads
  keep their own heaps. The process keeps its peak host memory, as torch's and XLA's GPU
  allocators keep device memory. Demo loop 7.9-8.1 -> 8.4-8.7 steps/s (BENCHMARKS.md,
  session 18).
- 'glibc_huge_pages': glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35): the block
  still comes and goes, but in 2 MB transparent huge pages, ~500x fewer faults.
- 'glibc': glibc as the process started.
(Keeping the block with glibc itself, one arena and no mmap, saved as much in the bare step,
but every thread then shared one malloc lock and the training loop lost it.)

The C library reads both settings only when a process starts, so the program re-executes
itself (same pid and arguments) with them in its environment. 'mimalloc' falls back to
'glibc_huge_pages' where the library is missing or the OS is not Linux, and that to 'glibc'
where huge pages are off or the C library is not glibc. On a GPU or TPU a step's
temporaries live on the device; the restart is cheap when it comes before the heavy imports
(main.py).
"""
import ctypes
import importlib.metadata
import os
import re
import sys

ALLOCATORS = ('mimalloc', 'glibc_huge_pages', 'glibc')
DEFAULT = 'mimalloc'
TUNABLE = 'glibc.malloc.hugetlb=1'
MIMALLOC_ENV = {'MIMALLOC_PURGE_DELAY': '-1'}
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
_FLAG = re.compile(r'^--?config\.runtime\.host_allocator(?:=(.*))?$')
_RESTARTED = 'RADJAX_HOST_ALLOCATOR_RESTARTED'  # guards against restarting in a loop


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc; None for another C library."""
  try:
    get = ctypes.CDLL(None).gnu_get_libc_version  # musl and macOS lack it
  except (OSError, AttributeError):
    return None
  get.restype = ctypes.c_char_p
  major, minor = get().decode().split('.')[:2]
  return int(major), int(minor)


def thp_mode(path: str = _THP_MODE) -> str:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'); 'never' where
  it cannot be read."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return 'never'
  return text.split('[', 1)[1].split(']', 1)[0] if '[' in text else 'never'


def huge_pages_available() -> bool:
  """Whether the glibc tunable can take effect here: glibc >= 2.35, huge pages not off."""
  version = glibc_version()
  return version is not None and version >= (2, 35) and thp_mode() in ('always', 'madvise')


def mimalloc_library() -> str | None:
  """Path of the `cmeel-mimalloc` wheel's shared library; None where it is not installed
  or the OS is not Linux (LD_PRELOAD)."""
  if not sys.platform.startswith('linux'):
    return None
  try:
    files = importlib.metadata.distribution('cmeel-mimalloc').files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if re.search(r'/libmimalloc\.so\.\d+$', str(f)):
      path = str(f.locate())
      return path if os.path.exists(path) else None
  return None


def resolve(allocator: str) -> str:
  """The allocator this machine gives for `allocator`, after the fallbacks."""
  if allocator not in ALLOCATORS:
    raise ValueError(f'config.runtime.host_allocator={allocator!r}: expected one of '
                     f'{", ".join(ALLOCATORS)}')
  if allocator == 'mimalloc' and mimalloc_library() is None:
    allocator = 'glibc_huge_pages'
  if allocator == 'glibc_huge_pages' and not huge_pages_available():
    allocator = 'glibc'
  return allocator


def _mimalloc_loaded() -> bool:
  try:
    with open('/proc/self/maps') as f:
      return 'libmimalloc' in f.read()
  except OSError:
    return False


def in_effect() -> str:
  """The allocator this process runs with (the environment it started with)."""
  if (_mimalloc_loaded() and all(os.environ.get(k) == v for k, v in MIMALLOC_ENV.items())):
    return 'mimalloc'
  if huge_pages_available() and TUNABLE in os.environ.get('GLIBC_TUNABLES', '').split(':'):
    return 'glibc_huge_pages'
  return 'glibc'


def requested(argv: list[str]) -> str:
  """`config.runtime.host_allocator` as the command line gives it (the last mention wins),
  else DEFAULT. Read before the config is parsed, so that the restart can come before the
  imports; a config file that sets it is honoured after parsing (main.py)."""
  value = DEFAULT
  for i, arg in enumerate(argv):
    match = _FLAG.match(arg)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else value)
  return value


def _environment(allocator: str) -> dict[str, str]:
  """os.environ without radjax's allocator settings, plus those of `allocator`."""
  env = dict(os.environ)
  preload = [p for p in env.pop('LD_PRELOAD', '').split(':') if p and 'libmimalloc' not in p]
  tunables = [t for t in env.pop('GLIBC_TUNABLES', '').split(':') if t and t != TUNABLE]
  for k in MIMALLOC_ENV:
    env.pop(k, None)
  if allocator == 'mimalloc':
    preload.insert(0, mimalloc_library())
    env.update(MIMALLOC_ENV)
  elif allocator == 'glibc_huge_pages':
    tunables.append(TUNABLE)
  if preload:
    env['LD_PRELOAD'] = ':'.join(preload)
  if tunables:
    env['GLIBC_TUNABLES'] = ':'.join(tunables)
  return env


def restart_with(allocator: str) -> None:
  """Re-executes this program (same pid, interpreter options and arguments) in the
  environment `allocator` needs (after resolve's fallbacks). Returns at once where that is
  in effect already, or where a restart for it has been tried. Call it before starting
  threads or touching devices."""
  want = resolve(allocator)
  if in_effect() == want or os.environ.get(_RESTARTED) == want:
    return
  env = _environment(want)
  env[_RESTARTED] = want
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
