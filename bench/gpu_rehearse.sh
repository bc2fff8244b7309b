#!/usr/bin/env bash
# Rehearses bench/gpu_all.sh here, on the CPU, against the device image's Python packages, so
# that a lease is not spent finding an import that fails there.
#   bash bench/gpu_rehearse.sh [name ...]     (default: every benchmark but vs_hf_train_small)
# Builds (once) a Python 3.12 venv at $VENV with the versions the image holds (KINDS.md's pip
# list: jax 0.11.2, numpy 2.5.2, torch 2.11.0, transformers 5.17.0, ...) and the image's other
# packages radjax's path touches, but none of the ones it lacks; gpu_all.sh then installs
# .whl/ (bench/gpu_wheels.sh) over it, as on the device. torch 2.11.0 is PyPI's CUDA build
# (~6 GB with its libraries); it runs on the CPU. llava_tinyllama is shrunk by LT_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/gpu_image_venv}
PY312=${PY312:-$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)}
IMAGE_PINS=(jax==0.11.2 jaxlib==0.11.2 numpy==2.5.2 torch==2.11.0 transformers==5.17.0
            tokenizers==0.23.2 safetensors==0.8.0 huggingface_hub==1.33.0 sentencepiece==0.2.2)
IMAGE_OTHERS=(flax optax orbax-checkpoint chex einops absl-py pillow scipy msgpack protobuf
              tensorstore etils psutil rich humanize simplejson pyyaml regex requests tqdm
              cloudpickle attrs fsspec jinja2 toolz treescope xxhash filelock opt-einsum)
if [ ! -x "$VENV/bin/python" ]; then
  "$PY312" -m venv "$VENV"
  "$VENV/bin/pip" install -q "${IMAGE_PINS[@]}" "${IMAGE_OTHERS[@]}"
fi
[ -d .whl ] || bash bench/gpu_wheels.sh
rm -rf /tmp/site  # gpu_all.sh installs .whl/ there, as on the device
LT_ARGS="--config.runtime.attention_impl=xla --config.train.batch_size=1 \
--config.data.max_len=320 --config.model.vision.num_layers=2 --config.model.vision.embed_dim=256 \
--config.model.vision.num_heads=4 --config.model.vision.mlp_dim=512 \
--config.model.llm.num_layers=2 --config.model.llm.embed_dim=128 --config.model.llm.num_heads=4 \
--config.model.llm.num_kv_heads=2 --config.model.llm.mlp_dim=256" \
  PY="$VENV/bin/python" OUT=${OUT:-/tmp/gpu_rehearsal} PEAK=${PEAK:-0.248} HBM=${HBM:-20} \
  bash bench/gpu_all.sh "${@:-vs_hf_train vs_hf_generate train_step compile_time remat frozen}"
