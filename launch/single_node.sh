#!/usr/bin/env bash
# One node, all its GPUs: distillation, then probes and evaluation of the teacher and the student.
#   launch/single_node.sh launch/configs/distill_rn50.toml
#   launch/single_node.sh launch/configs/distill_rn50.toml --dry-run   # resolved config + plan, no training
#   DRY=1 launch/single_node.sh launch/configs/distill_rn50.toml       # print the command only
# NGPU defaults to the GPUs visible (1 process on a machine without GPUs or nvidia-smi); the global
# batch stays 256 whatever NGPU is.
set -euo pipefail
CONFIG=${1:?usage: launch/single_node.sh CONFIG.toml [--set key=value ...] [--dry-run]}; shift
source "$(dirname "$0")/common.sh"
need_config "$CONFIG"
launch "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m fastfc distill --config "$CONFIG" "$@"
