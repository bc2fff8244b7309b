#!/usr/bin/env bash
# A Beam environment layered over the project's .venv: `python -m data_prep build ...
# --beam_runner DirectRunner` (or Dataflow/Spark/Flink) needs apache-beam, whose pins
# (pillow<13, protobuf<7) conflict with requirements.txt, so it gets its own venv that
# sees .venv's packages behind its own.
#   bash launch/beam_venv.sh && .beam-venv/bin/python -m data_prep build ... --beam_runner DirectRunner
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m venv .beam-venv
SITE=$(.venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
BEAM_SITE=$(.beam-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')
echo "$SITE" > "$BEAM_SITE/zz_radjax_venv.pth"
.beam-venv/bin/python -m pip install -q apache-beam==2.77.0
