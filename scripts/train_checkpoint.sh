#!/usr/bin/env bash
# How the shipped checkpoint (weather/assets/checkpoint.msgpack) is made, step by step.
#
#   scripts/train_checkpoint.sh archives   # the standard archives (about an hour, resumable)
#   scripts/train_checkpoint.sh bakeoff    # both architectures side by side, one core each
#   scripts/train_checkpoint.sh train      # the shipped model (U-Net) on both cores (resumable)
#   scripts/train_checkpoint.sh ship       # export the inference-only checkpoint
#   scripts/train_checkpoint.sh long       # issue 13: train on from the shipped model (one core)
#   scripts/train_checkpoint.sh lever NAME ARGS...   # the same with a lever, e.g. --input-noise 0.02
#       or --rollout-inputs 2 --rollout-depth 2 (both inputs the model's own, as in a rollout)
#
# The bake-off runs the two candidates at the same time, each pinned to one core with XLA
# single-threaded, so they see the same machine: their losses at equal wall-clock time are the
# "skill per training minute" comparison. Each loads the ten training years into memory (about
# 12 GB at the peak of loading, 6.5 GB after): start the second once the first has loaded, or
# the two peaks exceed a 24 GB machine. The winner (the U-Net) is then trained from scratch on
# both cores with a schedule that fits the time available (2000 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
WEATHER=.venv/bin/weather
SINGLE="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
BAKEOFF_MINUTES=${BAKEOFF_MINUTES:-8}
TRAIN_MINUTES=${TRAIN_MINUTES:-45}
LONG_MINUTES=${LONG_MINUTES:-600}
CORE=${CORE:-1}
LR=${LR:-5e-4}  # peak learning rate of long/lever (lower it to continue a well-trained source)

common=(--batch-size 8 --lr 1e-3 --warmup 300 --ema-decay 0.999 --validate-every 250
        --checkpoint-every 250 --quiet)
declare -A arch_args=(
  [transformer]="--arch transformer --patch 4 --d-model 256 --layers 6 --heads 8 --steps 6000"
  [unet]="--arch unet --unet-channels 32,64,128 --steps 4000"
)

case "${1:-}" in
  archives)
    export XLA_FLAGS="$SINGLE"
    (for s in val train-1; do taskset -c 0 $WEATHER data simulate --split $s --quiet; done) &
    (for s in test train-2; do taskset -c 1 $WEATHER data simulate --split $s --quiet; done) &
    wait
    ;;
  bakeoff)
    mkdir -p data/runs
    core=0
    for arch in transformer unet; do
      # shellcheck disable=SC2086
      XLA_FLAGS="$SINGLE" taskset -c $core $WEATHER train --run-dir data/runs/$arch \
        ${arch_args[$arch]} "${common[@]}" --max-minutes "$BAKEOFF_MINUTES" \
        > data/runs/$arch.log 2>&1 &
      core=$((core + 1))
    done
    wait
    ;;
  train)
    $WEATHER train --run-dir data/runs/shipped --arch unet --unet-channels 32,64,128 \
      --steps 2000 --warmup 200 --batch-size 8 --lr 1e-3 --ema-decay 0.999 \
      --validate-every 250 --checkpoint-every 250 --quiet --max-minutes "$TRAIN_MINUTES"
    ;;
  ship)
    $WEATHER export data/runs/shipped/checkpoint.msgpack weather/assets/checkpoint.msgpack
    mkdir -p docs
    cp data/runs/shipped/loss.png docs/loss.png
    ;;
  long|lever)
    # Warm start (see the source below) with an open-ended schedule: the peak
    # learning rate until 2000 steps, then peak / sqrt(step / 2000), so that the run can stop
    # at any moment (it resumes exactly: run the same command again) with a sensible rate
    # behind it. One core, single-threaded, so that a second run or other work has the other.
    # EMA snapshots every 1000 steps feed benchmarks/learning_curve.py.
    name=long
    extra=()
    if [ "$1" = lever ]; then name=$2; extra=("${@:3}"); fi
    mkdir -p data/runs
    # The source is copied once, so that shipping a new checkpoint does not change what a
    # resumed run started from: the best model of earlier sittings (checkpoints/warm-start.msgpack,
    # committed when it beat the shipped one on validation) where there is one, else the shipped.
    source=weather/assets/checkpoint.msgpack
    [ -f checkpoints/warm-start.msgpack ] && source=checkpoints/warm-start.msgpack
    [ -f data/runs/warm-source.msgpack ] || cp "$source" data/runs/warm-source.msgpack
    XLA_FLAGS="$SINGLE" taskset -c "$CORE" $WEATHER train --run-dir "data/runs/$name" \
      --init-from data/runs/warm-source.msgpack --steps 200000 --batch-size 8 --lr "$LR" \
      --warmup 300 --schedule rsqrt --rsqrt-ref 2000 --ema-decay 0.999 --validate-every 500 \
      --checkpoint-every 250 --snapshot-every 1000 --quiet --max-minutes "$LONG_MINUTES" \
      "${extra[@]}" >> "data/runs/$name.log" 2>&1
    ;;
  *)
    sed -n 2,15p "$0"
    exit 2
    ;;
esac
