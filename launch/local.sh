#!/usr/bin/env bash
# One host, all local devices: launch/local.sh configs/demo.py runs/demo [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.x=y ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.x=y ...]}; shift 2
exec .venv/bin/python main.py --config "$config" --workdir "$workdir" "$@"
