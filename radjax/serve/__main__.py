r"""The web demo on a trained or imported VLM workdir, or an LLM-CXR one (report -> image).

  python -m radjax.serve --workdir runs/demo [--host 127.0.0.1] [--port 7860] [--step N]
"""
import argparse
import sys

from radjax.serve import app, reporter


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m radjax.serve', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a radjax VLM workdir')
  parser.add_argument('--host', default='127.0.0.1',
                      help='address to bind (default 127.0.0.1: this machine only)')
  parser.add_argument('--port', type=int, default=7860)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
  args = parser.parse_args(argv)
  try:
    model = reporter.load(args.workdir, args.step)
  except (ValueError, FileNotFoundError) as e:  # the workdir, its config or step: named
    print(f'error: {e}', file=sys.stderr)
    return 2
  app.launch(model, args.host, args.port)
  return 0


if __name__ == '__main__':
  sys.exit(main())
