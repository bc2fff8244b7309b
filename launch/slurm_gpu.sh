#!/usr/bin/env bash
# Multi-node GPU run under SLURM: one process per node owning all its GPUs, joined by
# jax.distributed (process 0's node is the coordinator).
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh configs/<recipe>.py /shared/runs/x \
#     [--config.mesh.dcn.data=4 --config.mesh.fsdp=8 --config.x=y ...]
# Submit from the repo root (with .venv from launch/install.sh --gpu). The workdir must be
# on a filesystem every node sees. A requeued job (scancel --signal=TERM,
# preemption) saves at the next step and exits 0; submit the same command to resume.
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
set -euo pipefail
config=${1:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [--config.x=y ...]}
workdir=${2:?usage: sbatch launch/slurm_gpu.sh CONFIG WORKDIR [--config.x=y ...]}; shift 2
# sed reads every line: `head -n 1` would leave scontrol a closed pipe (SIGPIPE, exit 141,
# which pipefail makes the job's).
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)
export RADJAX_COORDINATOR=${RADJAX_COORDINATOR:-$head_node:${RADJAX_PORT:-12355}}
export RADJAX_NUM_PROCESSES=$SLURM_NTASKS
# H100/H200: overlap collectives with compute; bigger fused collectives over NVLink/IB.
export XLA_FLAGS=${XLA_FLAGS:-"--xla_gpu_enable_latency_hiding_scheduler=true \
--xla_gpu_all_reduce_combine_threshold_bytes=134217728 \
--xla_gpu_all_gather_combine_threshold_bytes=134217728 \
--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728"}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Each task's own SLURM_PROCID becomes its --process_id. Attention is the recipe's own
# (cudnn in the bf16 GPU recipes; a float32 size=tiny run keeps xla, which cudnn refuses).
srun --kill-on-bad-exit=1 bash -c 'exec .venv/bin/python main.py --config "$0" --workdir "$1" \
  --coordinator_address="$RADJAX_COORDINATOR" --num_processes="$RADJAX_NUM_PROCESSES" \
  --process_id="$SLURM_PROCID" "${@:2}"' \
  "$config" "$workdir" "$@"
