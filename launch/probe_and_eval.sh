#!/usr/bin/env bash
# The paper's probe + evaluation runs for one architecture: a linear probe on the CLIP teacher
# (weight decay 0.1) and on its distilled student (1e-3), both scored on ImageNet val and the five
# shift sets, the student's fit to the teacher per set, then the comparison table and the ID-vs-OOD
# plot (docs/recipe.md).
#   launch/probe_and_eval.sh RN50                 # after launch/single_node.sh launch/configs/distill_rn50.toml
#   DRY=1 launch/probe_and_eval.sh ViT-B-16       # print the commands only
# Data:
#   TRAIN   the probes' train split: the ImageNet train folder (<wnid>/*.JPEG; default data/imagenet/train)
#           or its shards, read through the evaluation transform (Resize bicubic + CenterCrop), as the
#           paper's code trained its probes. FAST=1 takes $BETONS/train.beton instead, the fast path
#           (ffcv's centre crop of the stored images; docs/recipe.md gives the measured difference).
#   BETONS  for FAST=1, train.beton stored for this architecture's input: by default the folder of
#           the architecture's launch config's train_beton (data/betons for the 224-px models,
#           data/betons_320 for RN50x4, data/betons_427 for RN50x16); fastfc refuses a beton stored
#           below the input.
#   SHARDS  one folder per shift set plus imagenet-val (ID is read like the shift sets, from the
#           original JPEGs: python -m data_prep.shifts --set imagenet-val --src /data/imagenet/val ...).
# ARCH is known when a launch/configs/distill_<arch>.toml names it ([encoder] name). NGPU ranks extract features.
set -euo pipefail
ARCH=${1:?usage: launch/probe_and_eval.sh ARCH   (one launch/configs/distill_*.toml names it: RN50 RN101 RN50x4 RN50x16 ViT-B-16)}
source "$(dirname "$0")/common.sh"
CONFIG=$(arch_config "$ARCH")
KEY=${CONFIG##*/distill_}; KEY=${KEY%.toml}
DEFAULT_BETONS=$(config_value "$CONFIG" data train_beton)
BETONS=${BETONS:-${DEFAULT_BETONS%/*}}; SHARDS=${SHARDS:-data/shards}; RUNS=${RUNS:-runs}
if [ -n "${FAST:-}" ]; then TRAIN=$BETONS/train.beton; else TRAIN=${TRAIN:-data/imagenet/train}; fi
STUDENT=${STUDENT:-$RUNS/distill_$KEY/weights.pt}
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m fastfc)

run "${TORCHRUN[@]}" probe --encoder "$ARCH" --pretrained openai --kind clip \
    --train "$TRAIN" --out "$RUNS/clip_$KEY/probe.pt"
run "${TORCHRUN[@]}" probe --encoder "$ARCH" --weights "$STUDENT" --kind distilled \
    --train "$TRAIN" --out "$RUNS/student_$KEY/probe.pt"
run "${TORCHRUN[@]}" eval --encoder "$ARCH" --pretrained openai --probe "$RUNS/clip_$KEY/probe.pt" \
    --shards "$SHARDS" --train "$TRAIN" --out "$RUNS/clip_$KEY"
run "${TORCHRUN[@]}" eval --encoder "$ARCH" --weights "$STUDENT" --probe "$RUNS/student_$KEY/probe.pt" \
    --shards "$SHARDS" --train "$TRAIN" --teacher-pretrained openai --out "$RUNS/student_$KEY"
run "$PY" -m fastfc eval --compare "$RUNS/clip_$KEY" "$RUNS/student_$KEY" --plot "$RUNS/id_vs_ood_$KEY.png"
