#!/bin/bash
# jaxworld on a Cloud TPU pod slice (or several slices): the same command on
# every host.
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh dynamics \
#       mesh.preset=fsdp train.batch_size=512 data.path=/mnt/data \
#       --workdir /mnt/runs/dyn
#
# On a TPU VM `jaxworld train` calls jax.distributed.initialize(), which finds
# the other hosts from the TPU metadata (and, for multislice, from the
# MEGASCALE_* variables). For several slices set mesh.dcn_data (or
# mesh.dcn_fsdp) to the slice count: those axes then cross the data-center
# network, everything else stays on ICI. data.path and --workdir must be
# shared by all hosts (Filestore, or a gcsfuse mount of a bucket).
set -euo pipefail

: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
ARGS=$(printf ' %q' "$@")

# Install the checkout on every host once:
#   gcloud compute tpus tpu-vm scp --recurse . "$TPU":jaxworld --zone "$ZONE" --worker=all
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
#       --command "pip install -e ~/jaxworld[tpu]"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/jaxworld && jaxworld train${ARGS} --resume"
