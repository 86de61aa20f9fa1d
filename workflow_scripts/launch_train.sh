#!/usr/bin/env bash
# Launch a training script. PARALLELISM model_split: one process that sees all the job's GPUs and
# splits the model over them (the paper code's layout). data_parallel: one process per GPU,
# torchrun on one node, or one torchrun per node (srun) joined by a c10d rendezvous when the job
# spans nodes. No GPU: one CPU process.
# Usage: launch_train.sh GPUS NODES PARALLELISM SCRIPT [ARGS...]
set -euo pipefail
gpus=$(( $1 > 0 ? $1 : 1 )); nodes=$2; parallelism=$3; shift 3
if [ "$parallelism" = model_split ]; then
    if [ "$nodes" -gt 1 ]; then
        echo "launch_train.sh: model_split runs one process on one node, got $nodes nodes" >&2
        exit 2
    fi
    exec torchrun --standalone --nproc_per_node=1 "$@"
fi
if [ "$nodes" -le 1 ]; then
    exec torchrun --standalone --nproc_per_node="$gpus" "$@"
fi
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
exec srun --nodes="$nodes" --ntasks-per-node=1 torchrun --nnodes="$nodes" --nproc_per_node=$(( gpus / nodes )) \
    --rdzv_backend=c10d --rdzv_id="$SLURM_JOB_ID" --rdzv_endpoint="$head_node:29500" "$@"
