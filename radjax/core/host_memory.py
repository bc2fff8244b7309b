"""Transparent huge pages for glibc's large host blocks (`config.runtime.host_huge_pages`).

XLA:CPU allocates a step's temporaries afresh every step, as one block (125 MB at the
demo's shapes, ~1.6 GB at the 43M-parameter bench shape). Asked for from XLA's worker
threads, a block that large is served by mmap, and munmap returns it when the step ends,
so each step faults all of it in again in 4 KB pages: 32k page faults and ~80 ms of kernel
time per demo step (a third of its CPU time), 400k and 1.1 s per 43M step (BENCHMARKS.md).
glibc's `glibc.malloc.hugetlb=1` tunable (glibc >= 2.35) marks such blocks for the
kernel's transparent huge pages: 2 MB pages, ~500x fewer faults, each thread keeping its
own malloc arena. (Keeping the block instead, with one arena and no mmap, saved as much in
the bare step but made every thread share one malloc lock: the training loop lost it.)

glibc reads tunables only when a process starts, so the program restarts itself with the
tunable set. It does nothing where the kernel's huge pages are off or the C library is not
glibc. On a GPU or TPU the step's temporaries live on the device; the restart is cheap
when it comes before the heavy imports (main.py).
"""
import ctypes
import os
import re
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
_OFF = ('false', 'f', '0')  # absl's boolean parser
_FLAG = re.compile(r'^--?(no)?config\.runtime\.host_huge_pages(?:=(.*))?$')


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


def available() -> bool:
  """Whether the tunable can take effect here: glibc >= 2.35 and huge pages not off."""
  version = glibc_version()
  return version is not None and version >= (2, 35) and thp_mode() in ('always', 'madvise')


def in_effect() -> bool:
  """Whether this process started with the tunable (glibc reads it only then)."""
  return available() and TUNABLE in os.environ.get('GLIBC_TUNABLES', '').split(':')


def turned_off(argv: list[str]) -> bool:
  """Whether a command line turns `config.runtime.host_huge_pages` off, as absl reads it
  (`--config.runtime.host_huge_pages=false|f|0`, `--noconfig.runtime.host_huge_pages`;
  the last mention wins). Read before the config is parsed, so that the restart can come
  before the imports."""
  off = False
  for arg in argv:
    match = _FLAG.match(arg)
    if match:
      no, value = match.groups()
      off = bool(no) if value is None else value.strip().lower() in _OFF
  return off


def restart_with_huge_pages() -> None:
  """Re-executes this program (same pid, interpreter options and arguments) with the
  tunable added to GLIBC_TUNABLES. Returns at once where it is in effect already or cannot
  take effect. Call it before starting threads or touching devices."""
  if in_effect() or not available():
    return
  tunables = os.environ.get('GLIBC_TUNABLES', '')
  os.environ['GLIBC_TUNABLES'] = ':'.join(filter(None, [tunables, TUNABLE]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
