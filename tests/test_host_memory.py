"""radjax/core/host_memory.py: freed host memory is reused, not faulted in afresh."""
import os
import subprocess
import sys
import textwrap

import pytest

from radjax.core import host_memory

# A worker thread (as XLA's are) mallocs, writes and frees a 64 MB block, 6 times (numpy
# would ask for huge pages, which XLA does not). With 'restart' the script first calls
# restart_reusing_freed_memory, as main.py does.
_SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from radjax.core import host_memory
    if sys.argv[1] == 'restart':
      host_memory.restart_reusing_freed_memory()
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
    print(host_memory.in_effect(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _run(mode: str) -> tuple[bool, int]:
  env = {k: v for k, v in os.environ.items() if k not in host_memory.SETTINGS}
  out = subprocess.run([sys.executable, '-c', _SCRIPT, mode], check=True, capture_output=True,
                       text=True, env=env).stdout.split()
  return out[-2] == 'True', int(out[-1])


@pytest.mark.skipif(not host_memory.is_glibc(), reason='glibc malloc settings')
def test_restart_reuses_the_freed_block():
  default, restarted = _run('default'), _run('restart')
  assert default[0] is False and restarted[0] is True
  # glibc's defaults: each of the 6 blocks is mmapped and faulted in anew; reused: once.
  assert restarted[1] < default[1] / 3, (default, restarted)
