#!/usr/bin/env bash
# TPU VM pod slice: the same command on every worker.
#   gcloud compute tpus tpu-vm ssh NAME --worker=all --command \
#     "cd radjax && bash launch/tpu_vm.sh configs/<recipe>.py gs://bucket/runs/x"
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1; workdir=$2; shift 2
export RADJAX_DISTRIBUTED=1  # jax.distributed discovers the TPU pod by itself
exec .venv/bin/python main.py --config "$config" --workdir "$workdir" \
  --config.runtime.attention_impl=xla "$@"
