"""radjax/core/host_memory.py: large host blocks in huge pages, not faulted in 4 KB at a time."""
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from radjax.core import host_memory

# A worker thread (as XLA's are) mallocs, writes and frees a 64 MB block, 6 times (numpy
# would ask for huge pages itself, which XLA does not). With 'restart' the script first
# calls restart_with_huge_pages, as main.py does.
_SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from radjax.core import host_memory
    if sys.argv[1] == 'restart':
      host_memory.restart_with_huge_pages()
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
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  out = subprocess.run([sys.executable, '-c', _SCRIPT, mode], check=True, capture_output=True,
                       text=True, env=env).stdout.split()
  return out[-2] == 'True', int(out[-1])


@pytest.mark.skipif(not host_memory.available(),
                    reason='needs glibc >= 2.35 and transparent huge pages not off')
def test_restart_puts_large_blocks_in_huge_pages():
  default, restarted = _run('default'), _run('restart')
  assert default[0] is False and restarted[0] is True
  # 4 KB pages: 16k faults per block (~98k); 2 MB pages: 32 per block.
  assert default[1] > 6 * 16_000, default
  assert restarted[1] < default[1] / 20, (default, restarted)


@pytest.mark.parametrize('args', [[], ['--config.runtime.host_huge_pages=False'],
                                  ['--config.runtime.host_huge_pages=F'],
                                  ['--noconfig.runtime.host_huge_pages'],
                                  ['-config.runtime.host_huge_pages=0'],
                                  # absl: a bare boolean flag is True ('False' is then
                                  # a positional argument); the last mention wins.
                                  ['--config.runtime.host_huge_pages', 'False'],
                                  ['--noconfig.runtime.host_huge_pages',
                                   '--config.runtime.host_huge_pages'],
                                  ['--config.runtime.host_huge_pages=f',
                                   '--config.runtime.host_huge_pages=true']])
def test_early_read_agrees_with_the_parsed_config(args):
  argv = ['main.py', '--config', 'configs/demo.py:size=micro', *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, sys_argv=argv)
  values(argv)
  assert host_memory.turned_off(argv) == (not values.config.runtime.host_huge_pages)


@pytest.mark.parametrize('text, mode', [('always [madvise] never\n', 'madvise'),
                                        ('[always] madvise never\n', 'always'),
                                        ('always madvise [never]\n', 'never'),
                                        ('', 'never')])
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / 'enabled'
  path.write_text(text)
  assert host_memory.thp_mode(str(path)) == mode
  assert host_memory.thp_mode(str(tmp_path / 'missing')) == 'never'
