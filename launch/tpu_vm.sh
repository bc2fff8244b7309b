#!/usr/bin/env bash
# One worker of a TPU VM pod slice (launch/tpu_pod.sh runs it on every worker):
#   bash launch/tpu_vm.sh configs/<recipe>.py /mnt/gcs/runs/x [--config.x=y ...]
# jax.distributed reads the slice's workers, this worker's id and the coordinator from the
# TPU VM metadata (RADJAX_DISTRIBUTED=1); one worker alone runs as a single process.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/tpu_vm.sh CONFIG WORKDIR [--config.x=y ...]}
workdir=${2:?usage: launch/tpu_vm.sh CONFIG WORKDIR [--config.x=y ...]}; shift 2
export RADJAX_DISTRIBUTED=1
exec .venv/bin/python main.py --config "$config" --workdir "$workdir" \
  --config.runtime.attention_impl=xla "$@"
