r"""radjax entry point.

  python main.py --config configs/demo.py --workdir runs/demo [--mode=train|eval|generate]
      [--config.train.num_steps=100] [--images a.png,b.png]
  python main.py --config configs/demo.py:task=lm --workdir runs/demo_lm   # decoder on text
  python main.py --config configs/workdir.py:WORKDIR --workdir WORKDIR --mode=generate \
      [--images a.png] [--prompt "Is there an effusion?"]   # a trained or imported workdir
  python main.py --config configs/llm_cxr.py:size=tiny,codec=C --workdir W --mode=generate \
      --prompt "<report>" [--out_dir D]   # LLM-CXR draws a PNG; --images x.png: its report
  python main.py --config configs/workdir.py:WORKDIR --workdir WORKDIR --mode=chat \
      [--images a.png]   # a multi-turn conversation on the command line
  python main.py ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0
      # one process of a multi-process run (also RADJAX_COORDINATOR / RADJAX_NUM_PROCESSES /
      # RADJAX_PROCESS_ID, or RADJAX_DISTRIBUTED=1 on SLURM and TPU VMs)
  XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu python main.py \
      --config configs/radvlm.py --workdir /tmp/x --mode=dry_run --config.mesh.fsdp=8 \
      --config.mesh.data=8   # per-device memory of the train step on 64 emulated devices
      # (without XLA_FLAGS, dry_run emulates 8)
An error in what was given (a knob, a file, a workdir) is one line; --verbosity=1 also logs
its traceback.
"""
import importlib
import importlib.util
import os
import sys
import traceback

from radjax.core import host_memory

# TensorFlow (imported by clu's summary writer and tfds; it computes nothing here) turns
# on its oneDNN ops on Intel CPUs and says so on stderr at import, before absl's logging
# starts: off, so stderr holds radjax's own messages.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

_EARLY_ALLOCATOR = host_memory.requested(sys.argv)
if __name__ == '__main__' and _EARLY_ALLOCATOR in host_memory.ALLOCATORS:
  # Before the imports below start threads (7 s of imports are not repeated this way). A
  # wrong name fails in main(), with the parsed config.
  host_memory.restart_with(_EARLY_ALLOCATOR)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from radjax import run  # noqa: E402
from radjax.core import distributed  # noqa: E402
from radjax.core import workdir as workdir_lib  # noqa: E402
from radjax.data import mixture  # noqa: E402
from radjax.train import loop  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Recipe config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and TensorBoard events go here.')
flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'generate', 'chat', 'dry_run'],
                  'What to do. dry_run: compile the train step for the configured mesh on '
                  'the visible devices (8 emulated CPU devices unless XLA_FLAGS sets '
                  '--xla_force_host_platform_device_count) and print per-device memory '
                  '(bench/memory.py); from the config alone, no dataset needed.')
flags.DEFINE_list('images', [], 'Image files for --mode=generate / chat.')
flags.DEFINE_string('prompt', '', 'The question for --mode=generate (a VLM: about each image; '
                    'default: the report request); a decoder workdir needs one.')
flags.DEFINE_string('out_dir', '', 'Where --mode=generate writes images an LLM-CXR workdir '
                    'draws from --prompt (default: <workdir>/generated).')
flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (multi-process runs).')
flags.DEFINE_integer('num_processes', 0, 'Processes in the run (multi-process runs).')
flags.DEFINE_integer('process_id', -1, 'This process, 0 .. num_processes-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def ensure_data(config) -> None:
  """Builds `config.data.dir` with data_prep.<config.data.builder>, and each mixture
  component's dir with its `builder`, when missing (process 0 builds, the others wait).
  The library never imports data_prep."""
  mixture.check_specs(config)  # a component that is no dict is named, not an AttributeError
  wanted = [('config.data', config.data.builder, config.data.dir,
             config.data.builder_kwargs.to_dict())]
  for name, spec in config.data.mixture.items():
    kwargs = spec.get('builder_kwargs', {})
    wanted.append((f'config.data.mixture.{name}', spec.get('builder', ''), spec.get('dir', ''),
                   kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)))
  # A dir of '' is unused (a mixture's eval falls back to its first component).
  missing = {d: (knob, b, kw) for knob, b, d, kw in wanted
             if b and d and not os.path.exists(os.path.join(d, 'manifest.json'))}
  if missing and jax.process_index() == 0:
    from data_prep import build  # tensorflow_datasets: imported only to build
    for data_dir, (knob, name, kwargs) in missing.items():
      if importlib.util.find_spec(f'data_prep.{name}') is None:
        raise ValueError(f'{knob}.builder: {name!r} is no module of data_prep/ (it builds '
                         f'{data_dir!r} when missing)')
      logging.info('building dataset %s into %s', name, data_dir)
      try:
        build.ensure_built(name, data_dir, **kwargs)
      except (TypeError, ValueError) as e:  # a bad builder_kwargs: name the knob
        raise ValueError(f'{knob}: {e}') from e
  if jax.process_count() > 1:
    # Every process, whatever it found: what each sees on disk may differ (a per-host
    # path such as the demo's ~/.cache, a process that looked after process 0 finished),
    # and one that skipped this barrier met process 0's in its next collective.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('radjax_data_built')


def expand_home(config) -> None:
  """'~/...' string values become paths: the shell leaves `--config.x=~/...` alone."""
  with config.unlocked():
    for key, value in config.items():
      if hasattr(value, 'items'):
        expand_home(value)
      elif isinstance(value, str) and value.startswith('~'):
        config[key] = os.path.expanduser(value)


def main(argv):
  del argv
  try:
    _main()
  except (ValueError, OSError, loop.NonFiniteLossError) as e:
    # What the user gave (a knob, a file, a workdir, a record; a path it cannot write; an
    # lr that diverges), named by the message: one line. --verbosity=1 logs the traceback.
    logging.debug('%s', traceback.format_exc())
    message = f'error: {_config_file_error(str(e))}'
    # Into logs/process_<i>.log as well: on a pod, another host's error is otherwise only
    # on its own terminal, while the rest wait in a collective until JAX gives up.
    distributed.write_to_log_file(message)
    distributed.exit_failed(message)
  except KeyboardInterrupt:  # Ctrl-C: the loop's cleanup has let queued saves finish
    logging.debug('%s', traceback.format_exc())
    print('interrupted; the same command resumes from the newest checkpoint',
          file=sys.stderr)
    sys.exit(130)
  except Exception:  # pylint: disable=broad-except
    # A failure of the run itself (a bug; a collective whose peer process died): its
    # traceback; a multi-process run's processes then leave at once (exit_failed).
    if not distributed.is_multi_process():
      raise
    message = traceback.format_exc().rstrip()
    distributed.write_to_log_file(message)
    distributed.exit_failed(message)


def _config_file_error(message: str) -> str:
  """ml_collections reports a config file it could not load on first use, wrapped in
  several lines: its own cause, one line."""
  prefix = 'Configuration is not available because of an earlier failure to load: '
  if not message.startswith(prefix):
    return message
  lines = [line.strip() for line in message[len(prefix):].splitlines() if line.strip()]
  return f'--config: {lines[-1]}' if lines else message


def _main():
  workdir_lib.check_local(FLAGS.workdir)
  run.check_flags(FLAGS.mode, FLAGS.images, FLAGS.prompt, FLAGS.out_dir)
  expand_home(FLAGS.config)
  # Before anything touches devices. Done already at the top unless a config file, not the
  # command line, changed the knob. Only as a program: a notebook calling main() keeps its
  # process.
  if __name__ == '__main__':
    host_memory.restart_with(FLAGS.config.runtime.host_allocator)
  else:
    host_memory.resolve(FLAGS.config.runtime.host_allocator)  # a wrong name still fails
  logging.info('host allocator: %s', host_memory.in_effect())
  if FLAGS.config.runtime.compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', FLAGS.config.runtime.compilation_cache_dir)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.mode == 'train':
    workdir_lib.check_resumable(FLAGS.config, FLAGS.workdir)  # before the log is opened
    distributed.log_to_file(FLAGS.workdir)  # <workdir>/logs/process_<i>.log
  if FLAGS.mode == 'dry_run':  # shapes only: no data, no tokenizer, nothing allocated
    from bench import memory
    memory.dry_run(FLAGS.config)
    return
  if FLAGS.mode not in ('generate', 'chat'):  # these need only the tokenizer
    run.check_config(FLAGS.config, FLAGS.mode == 'train')  # before a dataset is built
    ensure_data(FLAGS.config)
  stage = run.pre_stage(FLAGS.config, FLAGS.workdir) if FLAGS.mode == 'train' else None
  if stage:
    run.check_config(stage[0])
    ensure_data(stage[0])
  run.main(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images, FLAGS.prompt, FLAGS.out_dir)


def parse_flags(argv):
  """absl's parse, with a --config.* override that names no key, and a recipe that refuses
  its arguments, a one-line error (from ml_collections each is a traceback)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text:  # the recipe's own error, last line
      last = [line.strip() for line in text.splitlines() if line.strip()][-1]
      sys.exit(f'error: --config: {last.split(": ", 1)[-1]}')
    sys.exit(f'FATAL Flags parsing error: {e}\n'
             'Pass --helpshort or --helpfull to see help on flags.')
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], Exception):
      e = e.args[0]
    detail = str(e.args[0] if e.args else e)
    key = detail.split('\n')[0].strip('\'"')
    named = [a.split('=')[0] for a in argv[1:]
             if a.startswith('--config.') and key in a.split('=')[0].split('.')]
    hint = ' '.join(detail.split('\n')[1:]) or (_open_section_hint(argv, named[0], key)
                                                 if named else '')
    sys.exit(f"error: {named[0] if named else '--config'}: the config has no key {key!r}"
             + (f'. {hint}' if hint else ''))


# Sections whose keys are the user's (a builder's kwargs, mixture components, eval datasets):
# the locked config takes no new key there one at a time, but takes the section whole.
OPEN_SECTIONS = ('builder_kwargs', 'mixture', 'datasets')


def _open_section_hint(argv, flag: str, key: str) -> str:
  """How to give a key of an open section (a builder's manual_dir set as an override of its
  own was refused like a misspelling, with no word of the form that works)."""
  parts = flag[len('--config.'):].split('.')
  if key not in parts or parts.index(key) == 0:
    return ''
  section = '.'.join(parts[:parts.index(key)])
  if parts[parts.index(key) - 1] not in OPEN_SECTIONS:
    return ''
  now = ''
  try:  # the recipe's keys there, which the whole section must repeat
    path = next(a.split('=', 1)[1] if '=' in a else argv[i + 1]
                for i, a in enumerate(argv) if a.split('=', 1)[0] in ('--config', '-config'))
    node = FLAGS['config'].parser.parse(path)
    for part in section.split('.'):
      node = node[part]
    now = f" (it holds {', '.join(node.keys()) or 'nothing'} now)"
  except Exception:  # pylint: disable=broad-except
    pass
  return (f'config.{section} takes no new key alone; give it whole{now}: '
          f"--config.{section}=\"{{'{key}': ...}}\"")


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
