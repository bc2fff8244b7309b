#!/usr/bin/env bash
# Downloads, here, the Python 3.12 x86-64 wheels that the device machine's image lacks or holds
# at other versions than radjax's pins, into .whl/ (git-ignored). gpu_all.sh installs them
# there into /tmp/site before it runs anything; the device call names `.whl` in `carry`.
#   bash bench/gpu_wheels.sh        (~25 MB; versions: the ones installed in .venv)
# The image (KINDS.md, 2026-11) has jax 0.11.2 with its CUDA plugin, torch 2.11, flax, optax,
# orbax-checkpoint, transformers 5.17, tokenizers, safetensors, einops; it lacks
# ml_collections, grain, array_record, portpicker and pydicom (radjax.data.dicom, imported by
# every task through radjax.data.image_files). flax, optax, orbax-checkpoint, transformers and
# tokenizers travel too, so the bench runs the versions the tests ran.
# Rehearsed on this machine with a Python 3.12 venv of the image's packages (BENCHMARKS.md,
# "GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CARRY=(ml-collections grain array-record portpicker pydicom flax optax orbax-checkpoint
       transformers tokenizers einops cmeel-mimalloc cmeel)
pins=()
for name in "${CARRY[@]}"; do
  pins+=("$name==$($PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir .whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
ls .whl && du -sh .whl
