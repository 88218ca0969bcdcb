#!/usr/bin/env bash
# The prepared accelerator check (one device call, ~5 min on an H200, limit it to 540 s):
#   1. the distillation step, RN50 and ViT-B/16, batch 256, synthetic on-device batches, every
#      toggle row against the eager fp32 row (benchmarks/step.py), with MFU;
#   2. linear-probe head training on random on-device features, 1 head vs 8 (benchmarks/probe.py).
# The device has torch, torchvision, timm and tqdm but no ffcv, open_clip or ftfy: nothing here
# imports ffcv, and open_clip travels as wheels.
#
# Prepare once, here (no device time):
#   echo /.whl/ >> .git/info/exclude && bash benchmarks/gpu.sh --download
# Run: the device tool with command "bash benchmarks/gpu.sh", carry [".whl"], timeout_s 540.
# Then append the returned $OUT/history.jsonl to benchmarks/results/history.jsonl and commit it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--download" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl open_clip_torch==3.3.0 ftfy wcwidth
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export FASTFC_BENCH_HISTORY="${OUT:-/tmp}/history.jsonl"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -m benchmarks.step --arch RN50 --batch 256 --steps 20 --repeats 3 --warmup 5
python3 -m benchmarks.step --arch ViT-B-16 --batch 256 --steps 20 --repeats 3 --warmup 5
python3 -m benchmarks.probe --random-features
python3 -m benchmarks.summary --history "$FASTFC_BENCH_HISTORY"
echo "history lines: $FASTFC_BENCH_HISTORY"
