r"""The web demo on a trained or imported VLM workdir, or an LLM-CXR one (report -> image).

  python -m radjax.serve --workdir runs/demo [--host 127.0.0.1] [--port 7860] [--step N]
      [--max_upload_mb 1024]
"""
import argparse
import math
import os
import signal
import socket
import sys

# As main.py: TensorFlow (under tfds and clu, computing nothing here) would announce its
# oneDNN ops on stderr at import, before the demo's own lines.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from radjax.serve import app, reporter  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m radjax.serve', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a radjax VLM or LLM-CXR workdir')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to bind (default 127.0.0.1: this machine only)')
  parser.add_argument('--port', type=int, default=7860)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  parser.add_argument('--max_upload_mb', type=float, default=1024,
                      help='largest upload accepted, in MiB (default 1024: a multi-frame '
                      'DICOM study fits; a public demo may want less)')
  args = parser.parse_args(argv)
  if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb * 2**20 >= 1024):
    parser.error(f'--max_upload_mb={args.max_upload_mb}: give a finite size of at least '
                 '1 KiB (0.001)')
  if not 1 <= args.port <= 65535:
    parser.error(f'--port={args.port}: not a TCP port (1-65535)')
  try:
    _check_can_listen(args.host, args.port)  # before the model takes its minute to load
    model = reporter.load(args.workdir, args.step)
  except (ValueError, FileNotFoundError) as e:  # the workdir, its config or step: named
    print(f'error: {e}', file=sys.stderr)
    return 2
  # SIGTERM (kill, docker stop, systemd) closes the server as Ctrl-C does, so Gradio
  # removes the uploads (patients' films, DICOM headers) from its temp folder; Python's
  # default death on SIGTERM left them there for good.
  signal.signal(signal.SIGTERM, _interrupt)
  app.launch(model, args.host, args.port, max_upload_mb=args.max_upload_mb)
  return 0


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def _check_can_listen(host: str, port: int) -> None:
  """Binds host:port once and lets go: an address in use or not of this machine is named
  here, not as a server error after the model has loaded."""
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
      probe.bind(address)
  except OSError as e:
    raise ValueError(f'--host={host} --port={port}: cannot listen there '
                     f'({e.strerror or e}); choose another --port or --host') from e


if __name__ == '__main__':
  sys.exit(main())
