"""radjax/core/host_memory.py: a CPU step's large host blocks kept (mimalloc) or in huge
pages, not faulted in 4 KB at a time."""
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

from radjax.core import host_memory

# A worker thread (as XLA's are) mallocs, writes and frees a 64 MB block, 6 times (numpy
# would ask for huge pages itself, which XLA does not). The script first calls
# restart_with(<allocator>), as main.py does.
_SCRIPT = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from radjax.core import host_memory
    host_memory.restart_with(sys.argv[1])
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
_OURS = ('LD_PRELOAD', 'GLIBC_TUNABLES', 'RADJAX_HOST_ALLOCATOR_RESTARTED',
         *host_memory.MIMALLOC_ENV)


def _run(allocator: str) -> tuple[str, int]:
  env = {k: v for k, v in os.environ.items() if k not in _OURS}
  out = subprocess.run([sys.executable, '-c', _SCRIPT, allocator], check=True,
                       capture_output=True, text=True, env=env).stdout.split()
  return out[-2], int(out[-1])


def test_each_allocator_takes_effect_and_keeps_or_pages_the_blocks():
  glibc = _run('glibc')
  assert glibc[0] == 'glibc'
  if host_memory.thp_mode() != 'always':  # 'always' puts glibc's blocks in huge pages too
    assert glibc[1] > 6 * 16_000, glibc  # 4 KB pages: 16k faults per block, every time
  if host_memory.huge_pages_available():
    huge = _run('glibc_huge_pages')
    assert huge[0] == 'glibc_huge_pages'
    assert huge[1] < 6 * 16_000 / 20, (glibc, huge)  # 2 MB pages: 32 faults per block
  if host_memory.mimalloc_library():
    kept = _run('mimalloc')
    assert kept[0] == 'mimalloc'
    assert kept[1] < 2 * 16_000, (glibc, kept)  # the first block only: then reused


def test_unknown_allocator_is_named_and_fallbacks_are_taken(monkeypatch):
  with pytest.raises(ValueError, match=r'config\.runtime\.host_allocator=.jemalloc.'):
    host_memory.resolve('jemalloc')
  monkeypatch.setattr(host_memory, 'mimalloc_library', lambda: None)
  monkeypatch.setattr(host_memory, 'huge_pages_available', lambda: True)
  assert host_memory.resolve('mimalloc') == 'glibc_huge_pages'
  monkeypatch.setattr(host_memory, 'huge_pages_available', lambda: False)
  assert host_memory.resolve('mimalloc') == 'glibc'
  assert host_memory.resolve('glibc') == 'glibc'


def test_environment_swaps_only_radjax_settings(monkeypatch):
  monkeypatch.setattr(host_memory, 'mimalloc_library', lambda: '/site/libmimalloc.so.3')
  monkeypatch.setenv('LD_PRELOAD', '/x/libother.so:/old/libmimalloc.so.3')
  monkeypatch.setenv('GLIBC_TUNABLES', f'glibc.other=1:{host_memory.TUNABLE}')
  monkeypatch.setenv('MIMALLOC_PURGE_DELAY', '-1')
  plain = host_memory._environment('glibc')
  assert plain['LD_PRELOAD'] == '/x/libother.so'
  assert plain['GLIBC_TUNABLES'] == 'glibc.other=1'
  assert 'MIMALLOC_PURGE_DELAY' not in plain
  kept = host_memory._environment('mimalloc')
  assert kept['LD_PRELOAD'] == '/site/libmimalloc.so.3:/x/libother.so'
  assert kept['MIMALLOC_PURGE_DELAY'] == '-1' and kept['GLIBC_TUNABLES'] == 'glibc.other=1'
  huge = host_memory._environment('glibc_huge_pages')
  assert huge['GLIBC_TUNABLES'] == f'glibc.other=1:{host_memory.TUNABLE}'
  assert huge['LD_PRELOAD'] == '/x/libother.so'


@pytest.mark.parametrize('args', [[], ['--config.runtime.host_allocator=glibc'],
                                  ['-config.runtime.host_allocator=glibc_huge_pages'],
                                  ['--config.runtime.host_allocator', 'glibc'],
                                  ['--config.runtime.host_allocator=glibc',
                                   '--config.runtime.host_allocator=mimalloc']])
def test_early_read_agrees_with_the_parsed_config(args):
  argv = ['main.py', '--config', 'configs/demo.py:size=micro', *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, '', flag_values=values, sys_argv=argv)
  values(argv)
  assert host_memory.requested(argv) == values.config.runtime.host_allocator


@pytest.mark.parametrize('text, mode', [('always [madvise] never\n', 'madvise'),
                                        ('[always] madvise never\n', 'always'),
                                        ('always madvise [never]\n', 'never'),
                                        ('', 'never')])
def test_thp_mode_reads_the_bracketed_word(tmp_path, text, mode):
  path = tmp_path / 'enabled'
  path.write_text(text)
  assert host_memory.thp_mode(str(path)) == mode
  assert host_memory.thp_mode(str(tmp_path / 'missing')) == 'never'
