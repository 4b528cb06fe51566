#!/usr/bin/env bash
# Multi-node DDP training: `icpc train` under torchrun on NNODES machines (nccl on GPU, gloo on CPU).
#
# Run it on every node, at the same time, with the same arguments and a different NODE_RANK.
# RDZV_HOST is node 0's address, reachable from every node; node 0 hosts the rendezvous store on
# RDZV_PORT (static rendezvous: node ranks are exactly the NODE_RANKs given, so global rank 0,
# which writes checkpoints and metrics, runs on node 0).
#
#   # on node 0 (10.0.0.10):
#   NNODES=2 NODE_RANK=0 RDZV_HOST=10.0.0.10 cluster/train-torchrun.sh \
#     --data /mnt/shared/runs/data --output /mnt/shared/runs/icpc
#   # on node 1:
#   NNODES=2 NODE_RANK=1 RDZV_HOST=10.0.0.10 cluster/train-torchrun.sh \
#     --data /mnt/shared/runs/data --output /mnt/shared/runs/icpc
#
# Everything after the variables goes to `icpc train` (--epochs, --batch-size, --baseline,
# --strategy, --resume, --set KEY=VALUE, ...). --batch-size is per rank: the global batch is
# batch_size x NNODES x NPROC_PER_NODE.
#
# --data and --output may be object-store URLs (s3://bucket/prefix, gs://...; credentials and
# AWS_ENDPOINT_URL from the environment) or paths on shared storage mounted at the same place on
# every node (cluster/README.md). Global rank 0 holds OUTPUT/.lock while it trains: a second run
# into the same output is refused, naming the holder.
#
# Preemption: SIGTERM to torchrun (what Kubernetes and most schedulers send) reaches every rank;
# they finish the step, save OUTPUT/last.pt and exit; rerun with --resume, on the same or another
# number of nodes (the rest of the epoch is re-planned, each untrained sample once). With
# --checkpoint-every N a hard failure loses at most N optimizer steps.
#
# Variables (required ones have no default):
#   NNODES           number of nodes
#   NODE_RANK        this node's rank, 0..NNODES-1
#   RDZV_HOST        node 0's host name or IP
#   RDZV_PORT        rendezvous TCP port on node 0 (default 29500; open it between the nodes)
#   NPROC_PER_NODE   processes on this node (default: one per GPU, or 1 without GPUs)
#   MAX_RESTARTS     torchrun restarts of the whole group after a failure (default 0; pass
#                    --resume so a restart continues from OUTPUT/last.pt, mid-epoch)
#   PYTHON           the Python whose environment has icpc installed (default: python)
#   NCCL_SOCKET_IFNAME, NCCL_DEBUG, ... are passed through to nccl unchanged.
set -euo pipefail

NNODES=${NNODES:?set NNODES, the number of nodes}
NODE_RANK=${NODE_RANK:?set NODE_RANK, the rank of this node in 0..NNODES-1}
RDZV_HOST=${RDZV_HOST:?set RDZV_HOST, the address of node 0}
RDZV_PORT=${RDZV_PORT:-29500}
MAX_RESTARTS=${MAX_RESTARTS:-0}
PYTHON=${PYTHON:-python}

if [[ -z "${NPROC_PER_NODE:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && gpus=$(nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU'); then
    NPROC_PER_NODE=$gpus
  else
    NPROC_PER_NODE=1
  fi
fi
if (( NODE_RANK < 0 || NODE_RANK >= NNODES )); then
  echo "train-torchrun.sh: NODE_RANK=$NODE_RANK is outside 0..$((NNODES - 1)) for NNODES=$NNODES" >&2
  exit 2
fi

# One OpenMP thread pool per process, sized to this node's share of cores (the trainer also
# calls torch.set_num_threads; this covers the data loading before it).
if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
  OMP_NUM_THREADS=$(( $(nproc) / NPROC_PER_NODE > 0 ? $(nproc) / NPROC_PER_NODE : 1 ))
  export OMP_NUM_THREADS
fi

set -x
exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" \
  --node-rank="$NODE_RANK" \
  --nproc-per-node="$NPROC_PER_NODE" \
  --rdzv-backend=static \
  --rdzv-endpoint="$RDZV_HOST:$RDZV_PORT" \
  --max-restarts="$MAX_RESTARTS" \
  -m icpc.cli train "$@"
