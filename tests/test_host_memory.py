"""radjax/core/host_memory.py: freed host memory is reused, not faulted in afresh."""
import subprocess
import sys
import textwrap

import pytest

from radjax.core import host_memory

# A worker thread (as XLA's are) mallocs, writes and frees a 64 MB block, 6 times (numpy
# would ask for huge pages, which XLA does not).
_SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from radjax.core import host_memory
    if sys.argv[1] == 'reuse':
      assert host_memory.reuse_freed_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    def work():
      for _ in range(6):
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, '-c', _SCRIPT, mode], check=True, capture_output=True,
                       text=True)
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings')
def test_freed_block_is_reused_not_faulted_in_again():
  default, reused = _faults('default'), _faults('reuse')
  # glibc's defaults: each of the 6 blocks is mmapped and faulted in anew; reused: once.
  assert reused < default / 3, (default, reused)


def test_applies_where_glibc_is():
  assert host_memory.reuse_freed_memory() == sys.platform.startswith('linux')
