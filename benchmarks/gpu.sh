#!/usr/bin/env bash
# The one device call: the whole GPU path of fastfc, real commands on real (generated) photos.
#   0. install the carried bundle (.gpu/, `make gpu-bundle`: ffcv and fastfc's resize for the
#      device's Python 3.12, open_clip, webdataset, ...; benchmarks/gpu_install.sh);
#   1. step: benchmarks.step, RN50 and ViT-B/16 at batch 256, eager fp32 -> + channels_last -> + bf16
#      -> + compile -> + fused AdamW, with MFU and peak memory;
#   2. real data, real command: real-photo JPEGs at ImageNet-like sizes -> `python -m data_prep.imagenet`
#      (beton, --short-side 256) and `python -m data_prep.shifts` (imagenet-val + the r-like stand-in
#      as shards); `torchrun --nproc-per-node 1 -m fastfc distill` with launch/configs/distill_rn50.toml
#      (bf16, compile, channels_last, fused AdamW, NCCL; a random-init teacher: the device reaches no
#      download), SIGTERM mid-way;
#   3. stop and resume: the same command with --resume, then the check that the steps, the lr
#      schedule and the loss continue (benchmarks/gpu_run.py), img/s, data wait, MFU, peak memory;
#   4. loader: the ffcv GPU loader over that beton, all cores, against the decode bound of its
#      source JPEGs in the same run (benchmarks.loader --beton);
#   5. probe and eval on the GPU: `fastfc features`, `probe` (the paper's recipe) and `eval` over
#      the beton and the shards, with the distilled student;
#   6. record: the history lines (the device named in each) and a table.
# Each step runs guarded: a failure prints "STEP n FAILED: <reason>" and the later steps still run;
# the exit code is non-zero if any step failed. Under $OUT (else a temporary folder): gpu.log,
# history.jsonl (append it to benchmarks/results/history.jsonl) and table.md; the table is printed last.
#
# Prepare here (no device time): make gpu-bundle && make gpu-bundle-check
# Run: the device tool with command "bash benchmarks/gpu.sh", carry [".gpu"], timeout_s 480.
#
# `bash benchmarks/gpu.sh --cpu` is its twin: the same steps and code paths that exist without CUDA
# (gloo, fp32, no compile, the tiny encoder, a few dozen images), in about a minute, with the Python
# in $PY (default python3); when .gpu/ exists it also checks the bundle in Python 3.12
# (benchmarks/gpu_bundle_check.sh, with the environment `make gpu-bundle-check` made).
# tests/test_benchmarks.py runs it, so a change that would break the device call breaks CI.
set -uo pipefail
cd "$(dirname "$0")/.."
CPU=0
[ "${1:-}" = "--cpu" ] && CPU=1
PY=${PY:-python3}
RESULTS=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/fastfc-gpu.XXXXXX")}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fastfc-gpu-work.XXXXXX")  # data, betons, runs: not under $OUT (8 files come back)
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu.log TABLE=$RESULTS/table.md
# TQDM_DISABLE: progress bars would fill the log that comes back.
export FASTFC_BENCH_HISTORY=$RESULTS/history.jsonl PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$LOG") 2>&1

if [ $CPU = 1 ]; then   # tiny: 2 cores, CI
  DEV=cpu ARCH=tiny RES=32 CLASSES=4 TRAIN=16 VAL=4 MIN_SIDE=40 MAX_SIDE=96 SHORT=40 BATCH=8 WORKERS=1
  STEPS=2000 STOP=24 RESUME_FOR=24 LOG_EVERY=4 LIMIT=120 REPEATS=1 SHIFT_SETS=(imagenet-val)
  EXTRA=(train.precision=fp32 train.compile=false)
else                    # the device: 16 cores, one H200; 19 steps per epoch (a checkpoint at each end)
  DEV=cuda ARCH=RN50 RES=224 CLASSES=10 TRAIN=500 VAL=20 MIN_SIDE=160 MAX_SIDE=500 SHORT=256 BATCH=256
  WORKERS=$(nproc) STEPS=200 STOP=80 RESUME_FOR= LOG_EVERY=10 LIMIT=240 REPEATS=3 SHIFT_SETS=(imagenet-val imagenet-r)
  EXTRA=()
fi
DATA=$WORK/data BETON=$WORK/betons/train.beton SHARDS=$WORK/shards RUN=$WORK/distill
SETS=(encoder.name=$ARCH teacher.pretrained= data.train_beton=$BETON data.workers=$WORKERS
      train.out_dir=$RUN train.max_steps=$STEPS train.warmup_steps=$((STEPS / 4)) train.log_every=$LOG_EVERY
      train.global_batch_size=$BATCH train.checkpoint_every=100000 train.keep_weights_every_epochs=100000 "${EXTRA[@]}")
DISTILL=("$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m fastfc distill --config launch/configs/distill_rn50.toml)
for s in "${SETS[@]}"; do DISTILL+=(--set "$s"); done

why() { echo "$*" > "$WORK/why"; return 1; }  # a step's own reason for failing
note() { echo "$*" > "$WORK/note"; }            # a step's figure for the table

step0_bundle() {
  if [ $CPU = 1 ] && [ $INSTALLED = 1 ]; then
    note "the twin on the bundle: $("$PY" -c 'import sys, ffcv; print("Python", sys.version.split()[0], ffcv.__file__)')"
  elif [ $CPU = 1 ]; then
    [ -d .gpu ] || { note "skipped: no .gpu/ (make gpu-bundle)"; return 0; }
    [ -x "${GPU_CHECK_VENV:-/tmp/fastfc-gpu-check}/bin/python" ] ||
      { note "skipped: no Python 3.12 environment (make gpu-bundle-check makes it)"; return 0; }
    bash benchmarks/gpu_bundle_check.sh || why "benchmarks/gpu_bundle_check.sh failed (above)"
    note "installed into Python 3.12, ldd clean, ffcv round trip"
  else
    [ $INSTALLED = 1 ] || why "the bundle did not install (make gpu-bundle here, carry [\".gpu\"]; above)"
    "$PY" -c "import ffcv, fastfc.data.ffcv, open_clip, webdataset; from fastfc.data import resize; assert resize.AVAILABLE" ||
      why "the bundle installed but does not import"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    note "$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)')"
  fi
}

step1_step() {
  if [ $CPU = 1 ]; then
    "$PY" -m benchmarks.step --smoke || why "benchmarks.step --smoke failed"
  else
    local arch failed=
    for arch in RN50 ViT-B-16; do
      timeout -k 10 150 "$PY" -m benchmarks.step --arch $arch --batch 256 --steps 10 --repeats 3 --warmup 3 ||
        failed="$failed $arch"
    done
    [ -z "$failed" ] || why "benchmarks.step failed for$failed"
    note "$("$PY" -m benchmarks.gpu_run note step "$FASTFC_BENCH_HISTORY")"
  fi
}

step2_distill() {
  local set src
  "$PY" -m benchmarks.gpu_run photos "$DATA" --classes $CLASSES --train $TRAIN --val $VAL \
    --min-side $MIN_SIDE --max-side $MAX_SIDE ${SHIFT_SETS[1]:+--stand-ins} || why "the photo trees were not made"
  "$PY" -m data_prep.imagenet --src "$DATA/imagenet" --out "$(dirname "$BETON")" --short-side $SHORT \
    --workers $WORKERS || why "data_prep.imagenet failed"
  for set in "${SHIFT_SETS[@]}"; do
    src=$DATA/shifts/$set
    [ $set = imagenet-val ] && src=$DATA/imagenet/val
    "$PY" -m data_prep.shifts --set $set --src "$src" --out "$SHARDS" --workers $WORKERS ||
      why "data_prep.shifts --set $set failed"
  done
  # Its own process group, so that SIGTERM reaches torchrun and its worker at once, as SLURM's does.
  setsid "${DISTILL[@]}" > "$WORK/distill1.txt" 2>&1 &
  local pid=$! rc=0
  "$PY" -m benchmarks.gpu_run wait "$RUN" --step $STOP --pid $pid --timeout $LIMIT ||
    { kill -TERM -- -$pid 2>/dev/null; wait $pid; cat "$WORK/distill1.txt"; why "distill did not reach step $STOP (above)"; }
  kill -TERM -- -$pid
  wait $pid || rc=$?
  cat "$WORK/distill1.txt"
  # torchrun itself exits 1 on SIGTERM (SignalException) after its worker has saved and left.
  echo "distill: SIGTERM sent at step >= $STOP; torchrun exited $rc"
  grep -q "resume with --resume" "$WORK/distill1.txt" || why "the worker did not report a checkpoint after SIGTERM"
  [ -f "$RUN/checkpoint.pt" ] || why "SIGTERM left no $RUN/checkpoint.pt"
  wc -l < "$RUN/metrics.jsonl" > "$WORK/first_lines"
  note "SIGTERM'd after step $(tail -1 "$RUN/metrics.jsonl" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["step"])')"
}

step3_resume() {
  [ -f "$WORK/first_lines" ] || why "no stopped run to resume (step 2 failed)"
  local stopped                                   # the twin goes on RESUME_FOR steps, the device to the end
  stopped=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])["step"])' "$RUN/metrics.jsonl")
  timeout -k 10 $LIMIT "${DISTILL[@]}" --resume ${RESUME_FOR:+--set train.stop_after=$((stopped + RESUME_FOR))} ||
    why "distill --resume failed"
  "$PY" -m benchmarks.gpu_run resume "$RUN" --first-lines "$(cat "$WORK/first_lines")" --arch $ARCH \
    --device $DEV > "$WORK/resume.txt" || { cat "$WORK/resume.txt"; why "the resume check failed (above)"; }
  cat "$WORK/resume.txt"
  note "$(tail -1 "$WORK/resume.txt")"
}

step4_loader() {
  [ -f "$BETON" ] || why "no beton (step 2 failed)"
  timeout -k 10 $LIMIT "$PY" -m benchmarks.loader --beton "$BETON" --src "$DATA/imagenet/train" --device $DEV \
    --workers $WORKERS --batch-size $BATCH --resolution $RES --repeats $REPEATS || why "benchmarks.loader --beton failed"
  note "$("$PY" -m benchmarks.gpu_run note loader "$FASTFC_BENCH_HISTORY")"
}

step5_probe_eval() {
  local weights=$RUN/weights.pt
  [ -f "$weights" ] || weights=$RUN/checkpoint.pt   # the twin's resumed run stops early: its checkpoint
  [ -f "$weights" ] || why "no distilled student (steps 2-3 failed)"
  local enc=(--encoder $ARCH --weights "$weights" --cache "$WORK/cache" --workers $WORKERS)
  timeout -k 10 $LIMIT "$PY" -m fastfc features "${enc[@]}" "$BETON" "${SHIFT_SETS[@]/#/$SHARDS/}" ||
    why "fastfc features failed"
  timeout -k 10 $LIMIT "$PY" -m fastfc probe "${enc[@]}" --kind distilled --train "$BETON" --out "$WORK/probe/probe.pt" ||
    why "fastfc probe failed"
  timeout -k 10 $LIMIT "$PY" -m fastfc eval "${enc[@]}" --probe "$WORK/probe/probe.pt" --shards "$SHARDS" \
    --train "$BETON" --out "$WORK/eval" || why "fastfc eval failed"
  cat "$WORK/eval/results.md"
  note "$("$PY" -m benchmarks.gpu_run note eval "$WORK/eval/results.json")"
}

step6_record() {  # the lines of steps 1 (not the twin's smoke rows), 3 and 4, each naming the machine
  local want="distill_run loader_beton" names
  [ $CPU = 1 ] || want="step $want"
  names=$("$PY" -c 'import json,sys; print(" ".join(sorted({l["benchmark"] for l in map(json.loads, open(sys.argv[1])) if "machine" in l})))' \
    "$FASTFC_BENCH_HISTORY") || why "no history lines in $FASTFC_BENCH_HISTORY"
  for b in $want; do [[ " $names " == *" $b "* ]] || why "no $b history line (its step failed)"; done
  [ $CPU = 1 ] || "$PY" -m benchmarks.summary --history "$FASTFC_BENCH_HISTORY" || true
  note "$(wc -l < "$FASTFC_BENCH_HISTORY") lines ($names) in $FASTFC_BENCH_HISTORY"
}

ROWS=() FAILED=0
run_step() {  # n, title, function: guarded, timed, one table row
  local n=$1 title=$2 fn=$3 t0=$SECONDS rc
  rm -f "$WORK/why" "$WORK/note"
  echo; echo "=== STEP $n: $title"
  ( set -eE; trap 'echo "$BASH_COMMAND (exit $?)" > "$WORK/why.cmd"' ERR; $fn ); rc=$?
  if [ $rc = 0 ]; then
    ROWS+=("| $n | $title | ok | $((SECONDS - t0)) s | $(cat "$WORK/note" 2>/dev/null) |")
  else
    local reason
    reason=$(cat "$WORK/why" 2>/dev/null || cat "$WORK/why.cmd" 2>/dev/null || echo "exit $rc")
    echo "STEP $n FAILED: $reason"
    ROWS+=("| $n | $title | **FAILED** | $((SECONDS - t0)) s | $reason |")
    FAILED=1
  fi
  rm -f "$WORK/why.cmd"
}

T0=$SECONDS INSTALLED=0
# Here, not in step 0's subshell: its PYTHONPATH is for every later step. GPU_BUNDLE=1 makes the twin
# do it too (with PY=a Python 3.12 that has torch: the whole twin on the bundle, as on the device).
if [ $CPU = 0 ] || [ "${GPU_BUNDLE:-0}" = 1 ]; then
  source benchmarks/gpu_install.sh
  gpu_install && INSTALLED=1
fi
echo "fastfc gpu.sh $([ $CPU = 1 ] && echo --cpu) $(git rev-parse --short HEAD 2>/dev/null) $(date -u +%FT%TZ); results in $RESULTS"
run_step 0 "bundle" step0_bundle
run_step 1 "step: $([ $CPU = 1 ] && echo "tiny smoke" || echo "RN50 + ViT-B/16, batch 256")" step1_step
run_step 2 "data + torchrun distill ($ARCH), SIGTERM" step2_distill
run_step 3 "distill --resume + check" step3_resume
run_step 4 "ffcv loader vs decode bound ($DEV)" step4_loader
run_step 5 "features / probe / eval" step5_probe_eval
run_step 6 "record" step6_record
{
  echo "| step | what | result | time | figures / reason |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "$([ $FAILED = 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED") in $((SECONDS - T0)) s ($([ $CPU = 1 ] && echo "--cpu twin" || echo "$DEV")); log: $LOG"
} > "$TABLE"
echo
cat "$TABLE"
rm -rf "$WORK"
exit $FAILED
