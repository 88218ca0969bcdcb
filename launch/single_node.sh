#!/usr/bin/env bash
# One node, all its GPUs: distillation, then probes and evaluation of the teacher and the student.
#   launch/single_node.sh launch/configs/distill_rn50.toml
# NGPU defaults to the GPUs visible; the global batch stays 256 whatever NGPU is.
set -euo pipefail
CONFIG=${1:?usage: launch/single_node.sh CONFIG.toml [--set key=value ...]}; shift
NGPU=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
NGPU=$(( NGPU > 0 ? NGPU : 1 ))
PY=${PY:-.venv/bin/python}
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m fastfc distill --config "$CONFIG" "$@"
