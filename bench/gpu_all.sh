#!/usr/bin/env bash
# Every GPU benchmark of issue 15 in one go, most important first; each writes its table to
# $OUT/<name>.md (and its log next to it) and is cut at its own time limit, so a short
# device lease still returns the first tables.
#   OUT=/tmp/gpu_tables PEAK=989 HBM=4800 bash bench/gpu_all.sh [name ...]   (default: all)
# Device time is scarce (a lease may be 15 min with 10 min per command): pass names to split
# the list over calls, e.g. `train_step vs_hf_train` first, then `vs_hf_generate remat`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_tables}
PEAK=${PEAK:-989}  # H100/H200 SXM dense bf16 TFLOP/s
HBM=${HBM:-4800}  # GB/s: H200 4800, H100 SXM 3350
WANT=" ${*:-all} "
PY=${PY:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/machine.txt" 2>&1
$PY -c "import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)" \
  >> "$OUT/machine.txt" 2>&1

run() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  [[ "$WANT" == " all " || "$WANT" == *" $name "* ]] || return 0
  echo "== $name ($(date -u +%H:%M:%S))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "rc=$?" >> "$OUT/$name.log"
  grep -E '^\||^recommended' "$OUT/$name.log" > "$OUT/$name.md"
  tail -3 "$OUT/$name.md"
}

LT=configs/llava_tinyllama.py
run train_step 240 $PY bench/train_step.py --config $LT --steps 10 --peak_tflops "$PEAK"
run vs_hf_train 420 $PY bench/vs_hf_train.py --config $LT --sizes config --steps 10 --compile
run vs_hf_generate 300 $PY bench/vs_hf_generate.py --config $LT --batches 1,8,32 --hbm_gbps "$HBM"
run remat 420 $PY bench/remat.py --config $LT --steps 5 --hbm_gib 139
run compile_time 300 $PY bench/compile_time.py --config $LT --layers 4,32 --scan on
run frozen 240 $PY bench/frozen.py --config configs/xraygpt.py:size=tiny --steps 10
run vs_hf_train_small 300 $PY bench/vs_hf_train.py --config configs/demo.py --sizes 43m,100m --steps 10
