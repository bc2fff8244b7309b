#!/usr/bin/env bash
# A Beam environment layered over the project's .venv, for
#   .beam-venv/bin/python -m data_prep build NAME ... --beam_runner DirectRunner (or Dataflow ...)
#   .beam-venv/bin/tfds build data_prep/NAME --manual_dir SRC --data_dir OUT \
#       [--beam_pipeline_options=runner=R]   (tfds has no --beam_runner)
#   .beam-venv/bin/python -m pytest -q tests/test_beam_build.py
# apache-beam 2.77.0 (the newest; Python 3.11 and 3.12 wheels) requires protobuf<7 and
# pyarrow<26, and requirements.txt's stack resolves to protobuf 7.x and pyarrow 26.x, so
# Beam gets its own venv: it holds apache-beam, protobuf 6.33.6 and pyarrow 25.0.1
# (and Beam's other new dependencies) and sees .venv's packages behind its own, through a
# .pth file. protobuf 6.33.6 satisfies tensorflow 2.21 / tensorboard / grain /
# googleapis-common-protos (>=6.33.5); TFDS reads pyarrow only for its DataFrame helpers.
# Nothing is installed into .venv; re-running the script is safe.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-.venv/bin/python}  # the same Python as .venv: its packages are shared
if [[ ! -x .venv/bin/python ]]; then
  echo "no .venv here: run launch/install.sh first" >&2
  exit 1
fi
[[ -x .beam-venv/bin/python ]] || "$PY" -m venv .beam-venv
SITE=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
BEAM_SITE=$(.beam-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
# .pth paths go after the venv's own site-packages: Beam's pins win, .venv fills the rest.
# The repo root comes first, so that `tfds build data_prep/NAME` (whose builder modules
# import data_prep) works from any folder.
printf '%s\n%s\n' "$ROOT" "$SITE" > "$BEAM_SITE/zz_radjax_venv.pth"
# mlcroissant: TFDS 4.9.10's CLI imports it (and apache_beam) before running any command.
.beam-venv/bin/python -m pip install -q apache-beam==2.77.0 protobuf==6.33.6 pyarrow==25.0.1 \
  mlcroissant==1.1.1
# TFDS's own `tfds` command, run by this venv's Python (.venv/bin/tfds cannot: no Beam).
printf '%s\n' "#!$ROOT/.beam-venv/bin/python" 'import sys' \
  'from tensorflow_datasets.scripts.cli.main import launch_cli' 'sys.exit(launch_cli())' \
  > .beam-venv/bin/tfds
chmod +x .beam-venv/bin/tfds
cd / && "$ROOT/.beam-venv/bin/python" -c 'import apache_beam, mlcroissant, data_prep.builder
print("Beam", apache_beam.__version__, "ready in .beam-venv")'
