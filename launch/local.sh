#!/usr/bin/env bash
# One host, all local devices: launch/local.sh configs/demo.py runs/demo [--config.x=y ...]
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1; workdir=$2; shift 2
exec .venv/bin/python main.py --config "$config" --workdir "$workdir" "$@"
