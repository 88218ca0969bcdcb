#!/usr/bin/env bash
# The paper's probe + evaluation runs for one architecture: a linear probe on the CLIP teacher
# (weight decay 0.1) and on its distilled student (1e-3), both scored on ImageNet val and the five
# shift sets, then the comparison table and the ID-vs-OOD plot (docs/recipe.md).
#   launch/probe_and_eval.sh RN50                 # after launch/single_node.sh launch/configs/distill_rn50.toml
#   DRY=1 launch/probe_and_eval.sh ViT-B-16       # print the commands only
# Data: BETONS (train.beton, val.beton) and SHARDS (one folder per shift set); NGPU ranks extract features.
set -euo pipefail
ARCH=${1:?usage: launch/probe_and_eval.sh ARCH   (RN50 RN101 RN50x4 RN50x16 ViT-B-16)}
KEY=$(echo "$ARCH" | tr 'A-Z' 'a-z' | sed 's/vit-b-16/vit_b16/')
BETONS=${BETONS:-data/betons}; SHARDS=${SHARDS:-data/shards}; RUNS=${RUNS:-runs}
STUDENT=${STUDENT:-$RUNS/distill_$KEY/weights.pt}
source "$(dirname "$0")/gpus.sh"
NGPU=${NGPU:-$(gpu_count)}; NGPU=$(( NGPU > 0 ? NGPU : 1 ))
PY=${PY:-.venv/bin/python}
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m fastfc)
run() { echo "+ $*"; [ -n "${DRY:-}" ] || "$@"; }

run "${TORCHRUN[@]}" probe --encoder "$ARCH" --pretrained openai --kind clip \
    --train "$BETONS/train.beton" --out "$RUNS/clip_$KEY/probe.pt"
run "${TORCHRUN[@]}" probe --encoder "$ARCH" --weights "$STUDENT" --kind distilled \
    --train "$BETONS/train.beton" --out "$RUNS/student_$KEY/probe.pt"
run "${TORCHRUN[@]}" eval --encoder "$ARCH" --pretrained openai --probe "$RUNS/clip_$KEY/probe.pt" \
    --val "$BETONS/val.beton" --shards "$SHARDS" --out "$RUNS/clip_$KEY"
run "${TORCHRUN[@]}" eval --encoder "$ARCH" --weights "$STUDENT" --probe "$RUNS/student_$KEY/probe.pt" \
    --val "$BETONS/val.beton" --shards "$SHARDS" --out "$RUNS/student_$KEY"
run "$PY" -m fastfc eval --compare "$RUNS/clip_$KEY" "$RUNS/student_$KEY" --plot "$RUNS/id_vs_ood_$KEY.png"
