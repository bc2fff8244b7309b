#!/usr/bin/env bash
# A TPU VM pod slice from your workstation: installs radjax on every worker (first time) and
# starts the same command on all of them.
#   bash launch/tpu_pod.sh NAME[,NAME...] ZONE configs/<recipe>.py /mnt/gcs/runs/x [--config.x=y ...]
# Multislice (several slices, e.g. a queued resource's nodes q-0,q-1): every slice's name,
# comma-separated, and --config.mesh.dcn.data=<slices>; each slice's workers are started
# at once (one slice alone would wait for the others until JAX gives up). The repo is
# expected at ~/radjax on each worker (RADJAX_REPO to change; e.g. gcloud ... scp
# --worker=all). The workdir is a path every worker mounts (e.g. a bucket through gcsfuse);
# a gs:// URL is refused.
set -euo pipefail
names=${1:?usage: launch/tpu_pod.sh NAME[,NAME...] ZONE CONFIG WORKDIR [--config.x=y ...]}
zone=${2:?usage: launch/tpu_pod.sh NAME[,NAME...] ZONE CONFIG WORKDIR [--config.x=y ...]}
shift 2
repo=${RADJAX_REPO:-radjax}
args=$(printf ' %q' "$@")
command="cd $repo && { [ -x .venv/bin/python ] || bash launch/install.sh --tpu; } && bash launch/tpu_vm.sh$args"
IFS=, read -r -a slices <<< "$names"
if [ "${#slices[@]}" -eq 1 ]; then
  exec gcloud compute tpus tpu-vm ssh "${slices[0]}" --zone "$zone" --worker=all --command "$command"
fi
# Several slices: one ssh each, side by side (background jobs ignore Ctrl-C: passed on).
pids=()
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
for name in "${slices[@]}"; do
  gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$command" \
    < /dev/null &
  pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit $rc
