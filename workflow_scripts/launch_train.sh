#!/usr/bin/env bash
# Launch a training script with one process per GPU: torchrun on one node, or one torchrun per
# node (srun) joined by a c10d rendezvous when the job spans nodes. No GPU: one CPU process.
# Usage: launch_train.sh GPUS NODES SCRIPT [ARGS...]
set -euo pipefail
gpus=$(( $1 > 0 ? $1 : 1 )); nodes=$2; shift 2
if [ "$nodes" -le 1 ]; then
    exec torchrun --standalone --nproc_per_node="$gpus" "$@"
fi
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
exec srun --nodes="$nodes" --ntasks-per-node=1 torchrun --nnodes="$nodes" --nproc_per_node=$(( gpus / nodes )) \
    --rdzv_backend=c10d --rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="$head_node:29500" "$@"
