#!/usr/bin/env bash
# Multi-node GPU run under SLURM, one process per node owning all its GPUs:
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh configs/<recipe>.py /shared/runs/x [--config.x=y]
#SBATCH --ntasks-per-node=1
set -euo pipefail
config=$1; workdir=$2; shift 2
export RADJAX_DISTRIBUTED=1  # jax.distributed reads SLURM's variables
srun .venv/bin/python main.py --config "$config" --workdir "$workdir" \
  --config.runtime.attention_impl=cudnn "$@"
