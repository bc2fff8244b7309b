"""glibc malloc settings that keep freed host memory for the next train step.

XLA:CPU allocates a step's temporaries afresh every step, as one block (125 MB at the
demo's shapes, ~1.6 GB at the 43M-parameter bench shape). Asked for from XLA's worker
threads, a block that large is served by mmap, and munmap returns it when the step ends,
so each step faults all of it in again: 32k page faults and ~80 ms of kernel time per
demo step (a third of its CPU time), 400k and 1.1 s per 43M step (BENCHMARKS.md). One
malloc arena, no mmap and no trimming keep the block in the heap for the next step.

glibc reads these settings from the environment when a process starts. A mallopt call
from Python comes too late once an imported library has started threads (a thread keeps
the arena it first got), so the program restarts itself with them set.

The price: every thread shares one malloc lock, and freed memory stays with the process.
Grain's decode threads lose 10-27 %, and XLA's compiler threads lose too. In main.py's
training loop at the demo's size that cancelled the step's gain, so
`config.runtime.reuse_host_memory` is off by default. It is for long runs whose step runs
on the CPU, and for measuring the step alone (bench/vs_hf_train.py). On a GPU or TPU the
step's temporaries live on the device.
"""
import ctypes
import os
import sys

SETTINGS = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
            'MALLOC_TRIM_THRESHOLD_': str(2**31 - 1)}


def is_glibc() -> bool:
  try:
    ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018 (musl and macOS lack it)
  except (OSError, AttributeError):
    return False
  return True


def in_effect() -> bool:
  """Whether this process started with the settings (glibc reads them only then)."""
  return is_glibc() and all(os.environ.get(k) == v for k, v in SETTINGS.items())


def restart_reusing_freed_memory() -> None:
  """Re-executes this program (same pid, interpreter options and arguments) with the
  settings in its environment. Returns at once where they are in effect already, or where
  the C library is not glibc. Call it before starting threads or touching devices."""
  if in_effect() or not is_glibc():
    return
  os.environ.update(SETTINGS)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
