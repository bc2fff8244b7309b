#!/usr/bin/env bash
# Creates .venv (if missing) and installs radjax's pinned requirements into it.
# torchxrayvision is installed without its dependencies: radjax only reads the
# OpenI report archive that ships inside its wheel (pulling its deps would bring
# torchvision and a multi-GB CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps torchxrayvision==1.5.7
