#!/usr/bin/env bash
# Several nodes: run this on every node with its own NODE_RANK (0..NNODES-1), same MASTER.
#   NNODES=4 NODE_RANK=0 MASTER=node0:29500 launch/multi_node.sh launch/configs/distill_rn50x16.toml
#   DRY=1 NNODES=4 NODE_RANK=0 MASTER=node0:29500 launch/multi_node.sh CONFIG.toml   # print the command only
# c10d rendezvous; the global batch (256) is split over NNODES x GPUs per node.
set -euo pipefail
CONFIG=${1:?usage: NNODES=N NODE_RANK=R MASTER=host:port launch/multi_node.sh CONFIG.toml [--set ...]}; shift
: "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}" "${MASTER:?set MASTER=host:port}"
source "$(dirname "$0")/common.sh"
need_config "$CONFIG"
launch "$PY" -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NGPU" \
    --rdzv-backend c10d --rdzv-endpoint "$MASTER" --rdzv-id "${RDZV_ID:-fastfc}" \
    -m fastfc distill --config "$CONFIG" "$@"
