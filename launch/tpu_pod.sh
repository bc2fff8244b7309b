#!/usr/bin/env bash
# A TPU VM pod slice from your workstation: installs radjax on every worker (first time) and
# starts the same command on all of them.
#   bash launch/tpu_pod.sh NAME ZONE configs/<recipe>.py /mnt/gcs/runs/x [--config.x=y ...]
# Multislice (several slices): --config.mesh.dcn.data=<slices>. The repo is expected at
# ~/radjax on each worker (RADJAX_REPO to change; e.g. gcloud ... scp --worker=all). The
# workdir is a path every worker mounts (e.g. a bucket through gcsfuse); a gs:// URL is refused.
set -euo pipefail
name=${1:?usage: launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR [--config.x=y ...]}
zone=${2:?usage: launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR [--config.x=y ...]}; shift 2
repo=${RADJAX_REPO:-radjax}
args=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command \
  "cd $repo && { [ -x .venv/bin/python ] || bash launch/install.sh --tpu; } && bash launch/tpu_vm.sh$args"
