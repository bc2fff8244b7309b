#!/usr/bin/env bash
# Creates .venv (if missing) and installs radjax's pinned requirements into it.
#   bash launch/install.sh          # CPU (what CI runs)
#   bash launch/install.sh --gpu    # + jax[cuda12] (NVIDIA; JAX_CUDA=cuda13 for CUDA 13)
#   bash launch/install.sh --tpu    # + jax[tpu] (libtpu)
# --gpu / --tpu install the accelerator build of the jax version requirements.txt chose, and a
# CPU torch on every Python, so the conversion parity tests run on that machine too.
# torchxrayvision is installed without its dependencies: radjax only reads the
# OpenI report archive that ships inside its wheel (pulling its deps would bring
# torchvision and a multi-GB CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
platform=cpu
for arg in "$@"; do
  case "$arg" in
    --gpu) platform=gpu ;;
    --tpu) platform=tpu ;;
    --cpu) platform=cpu ;;
    *) echo "launch/install.sh: unknown argument $arg (--gpu, --tpu or none)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps torchxrayvision==1.5.7
if [ "$platform" != cpu ]; then
  JAX_VERSION=$(.venv/bin/python -c 'import jax; print(jax.__version__)')
  extra=$([ "$platform" = gpu ] && echo "${JAX_CUDA:-cuda12}" || echo tpu)
  .venv/bin/python -m pip install -q "jax[$extra]==$JAX_VERSION"
  # requirements.txt pins torch for Python < 3.12 only; the CPU wheel keeps CUDA torch out.
  .venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q \
    --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION:-2.13.0}"
  .venv/bin/python -c "import jax; print('jax', jax.__version__, jax.devices())"
fi
