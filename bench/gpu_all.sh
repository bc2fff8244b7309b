#!/usr/bin/env bash
# Every GPU benchmark of issue 15 in one go, most important first. Each appends its table to
# $OUT/tables.md, keeps its log in $OUT/<name>.log, and is cut at its own time limit, so a
# short device lease still returns the first tables.
#   OUT=/tmp/gpu_tables PEAK=989 [HBM=4800] bash bench/gpu_all.sh [name ...]   (default: all)
# Device time is scarce (15 min a lease, 10 min a command, 8 files back): split the list over
# calls, e.g. `vs_hf_train` (<= 540 s: radjax, HF eager and torch.compile, each with its
# MFU), then `vs_hf_generate train_step`.
# The image lacks some of radjax's packages: run `bash bench/gpu_wheels.sh` here first and
# name `.whl` in the call's `carry`; they are installed into /tmp/site below.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_tables}
PEAK=${PEAK:-989}  # H100/H200 SXM dense bf16 TFLOP/s
# GB/s of HBM, the decode bound's: H200 4800, H100 SXM 3350; read off the GPU's name if not given.
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
case "$GPU_NAME" in
  *H200*) HBM=${HBM:-4800} ;;
  *H100*) HBM=${HBM:-3350} ;;
  *) HBM=${HBM:-4800} ;;
esac
# JAX may take 92 % of the GPU's memory, as launch/slurm_gpu.sh lets training (its default,
# 75 %, is 60 GiB of an H100's 79.6); remat.py's "fits" is that share (H100 73 GiB, H200 129).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
[[ "$MIB" =~ ^[0-9]+$ ]] || MIB=143771
HBM_GIB=${HBM_GIB:-$(python3 -c "print(int($MIB / 1024 * $XLA_PYTHON_CLIENT_MEM_FRACTION))")}
WANT=" ${*:-all} "
PY=${PY:-python3}
# Overrides for every llava_tinyllama command (a rehearsal on a CPU shrinks the model with them).
LT_ARGS=${LT_ARGS:-}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/machine.txt" 2>&1 || { cat "$OUT/machine.txt"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> "$OUT/machine.txt" 2>&1
$PY -c "import jax, torch, flax, transformers as t; print(jax.__version__, jax.devices(),
torch.__version__, flax.__version__, t.__version__)" >> "$OUT/machine.txt" 2>&1

run() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  [[ "$WANT" == " all " || "$WANT" == *" $name "* ]] || return 0
  echo "== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  { echo; echo "## $name (rc=$rc, $(date -u +%H:%M:%S))"; echo;
    grep -E '^\||^recommended|^MFU|^TFLOP|^step time|^tokens/s|^torch.compile|ms; step-0 loss' \
      "$OUT/$name.log"; } \
    >> "$OUT/tables.md"
  tail -3 "$OUT/$name.log"
}

LT=configs/llava_tinyllama.py
# radjax's step, then HF's (eager and torch.compile), each process with the GPU to itself: an
# 80 GB H100 does not hold both full-size steps (~40 + ~60 GB). No lead steps: no VM here.
run vs_hf_train 540 $PY bench/vs_hf_train.py --config $LT --sizes config --steps 10 --compile \
  --one_at_a_time --lead 0 --peak_tflops "$PEAK" $LT_ARGS
# Decode next: its targets are in no other table (vs_hf_train already has radjax's MFU).
run vs_hf_generate 300 $PY bench/vs_hf_generate.py --config $LT --batches 1,8,32 --hbm_gbps "$HBM" $LT_ARGS
run train_step 150 $PY bench/train_step.py --config $LT --steps 10 --peak_tflops "$PEAK" $LT_ARGS
run compile_time 240 $PY bench/compile_time.py --config $LT --layers 4,32 --scan on $LT_ARGS
run remat 420 $PY bench/remat.py --config $LT --steps 5 --hbm_gib "$HBM_GIB" $LT_ARGS
run frozen 240 $PY bench/frozen.py --config configs/xraygpt.py:size=tiny --steps 10
run vs_hf_train_small 300 $PY bench/vs_hf_train.py --config configs/demo.py --sizes 43m,100m --steps 10
# RadFM's tower at its size (512 x 512 x 64, 12 x 768), 10 slots with 2 used: the volume slot
# switch (session 39) against one tower call; VS_ARGS shrinks it for a CPU rehearsal.
VS_ARGS=${VS_ARGS:-"--config.model.vision.image_size=512 --config.model.vision.patch_size=32"}
run volume_slots 240 $PY bench/volume_slots.py --config configs/radfm.py:size=tiny \
  --config.model.vision.max_depth=64 --config.model.vision.embed_dim=768 \
  --config.model.vision.num_layers=12 --config.model.vision.num_heads=8 \
  --config.model.vision.head_dim=64 --config.model.vision.mlp_dim=2048 \
  --config.runtime.dtype=bfloat16 $VS_ARGS --slots 10 --depths 32,64 --buckets 16,32 \
  --batch 1 --steps 5
