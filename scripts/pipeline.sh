#!/usr/bin/env bash
# From zero to a prediction: every stage on a small build (the README's walk-through; `make pipeline`).
# Usage: scripts/pipeline.sh [OUT]   (default out/pipeline; about 3 minutes on 2 cores)
# Runs in the active virtualenv, else in .venv (make setup, or scripts/setup.sh dev,train).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/pipeline}
if [ -z "${VIRTUAL_ENV:-}" ] && [ -z "${CONDA_PREFIX:-}" ]; then
    source .venv/bin/activate
fi
step() {  # step NAME COMMAND...: run it, then say how long it took
    local name=$1 t0=$SECONDS
    shift
    echo "[pipeline] $name: $*"
    "$@"
    echo "[pipeline] $name: done in $((SECONDS - t0)) s"
}

# --8<-- the README's commands, in order (tests/test_pipeline.py checks that they agree)
step build python -m pipelines.build --spec manifests/pipeline.yaml --output $OUT
step vae python -m lavin_data.testing tiny-stvae $OUT/tiny-stvae
step encode python -m lavin_data.encode_latents --pixels $OUT --out $OUT/latents/tiny-64 --resolution 64 --vae $OUT/tiny-stvae
step train python -m lavin_model.train --latents $OUT/latents/tiny-64 --out $OUT/run --steps 300 --micro-batch 8 --context 1-3 --lr 1e-3 --warmup 20 --ema-decay 0.99 --log-every 50 --val-every 100 --save-every 300 --sample-every 300 --vae $OUT/tiny-stvae
step templates python -m lavin_data.export_templates --pairs $OUT --out $OUT/templates --tasks depth_estimation --count 4
step queries python -m lavin_data.export_templates --pairs $OUT --out $OUT/queries --tasks depth_estimation --split val --count 2
step infer python -m lavin_model.infer --checkpoint $OUT/run/model --vae $OUT/tiny-stvae --examples $OUT/templates/depth_estimation --query $OUT/queries/depth_estimation/0000_*_input.* --out $OUT/prediction.png
step evaluate python -m lavin_model.evaluate --checkpoint $OUT/run/model --vae $OUT/tiny-stvae --pairs $OUT/pairs --out $OUT/eval --limit 2 --context 2 --sweep 1,2 --steps 10
# -->8--
echo "[pipeline] done in $SECONDS s: prediction $OUT/prediction.png, metrics $OUT/eval/metrics.json"
