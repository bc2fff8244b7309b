"""glibc malloc settings that keep freed host memory for the next train step.

XLA:CPU allocates a step's temporaries afresh every step, as one block (125 MB at the
demo's shapes, ~1.6 GB at the 43M-parameter bench shape). Asked for from XLA's worker
threads, a block that large is served by mmap, and munmap returns it when the step ends,
so each step faults all of it in again: 32k page faults and ~80 ms of kernel time per
demo step (a third of its CPU time), 400k and 1.1 s per 43M step (BENCHMARKS.md). One
malloc arena, no mmap and no trimming keep the block in the heap for the next step.

The price: every thread shares one malloc lock (Grain's decode threads lose 10-20 %), and
freed memory stays with the process. So it is for runs whose step runs on the CPU
(`config.runtime.reuse_host_memory`, on in the CPU-sized configs); on a GPU or TPU the
step's temporaries live on the device.
"""
import ctypes

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def reuse_freed_memory() -> bool:
  """Applies the settings; True where they took (glibc). Call it before JAX starts its
  backend: a thread keeps the malloc arena it first got."""
  try:
    libc = ctypes.CDLL(None)  # the symbols already loaded into this process
    libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl and macOS lack it)
  except (OSError, AttributeError):
    return False
  return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)
