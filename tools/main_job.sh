#!/usr/bin/env bash
# The main job: set up the environment (idempotent), train a small DI-MaskDINO from scratch on
# the embedded shapes dataset on the CPU, evaluate it (COCO box + mask AP tables), and draw the
# loss curve and predictions on validation images.
#
#   bash tools/main_job.sh                      # output in output/embedded_r18
#   SKIP_SETUP=1 bash tools/main_job.sh         # environment already set up
#   bash tools/main_job.sh SOLVER.MAX_ITER 100  # extra config overrides
#
# Writes to OUTPUT_DIR: log.txt, metrics.json, model_final.pth, loss_curve.png,
# predictions_val.png, inference/ (COCO predictions).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUTPUT_DIR="${OUTPUT_DIR:-output/embedded_r18}"
CONFIG="configs/embedded/dimaskdino_r18_embedded.yaml"

if [ "${SKIP_SETUP:-0}" != "1" ]; then
  bash tools/setup.sh
fi
PY="$ROOT/.venv/bin/python"
# OpenMP threads sleep instead of spinning while they wait: on a small, shared CPU a spinning
# thread that lost its core stalls every parallel op (measured 5x slower iterations).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
start=$(date +%s)
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUTPUT_DIR" "$@"
trained=$(date +%s)
"$PY" tools/plot_main_job.py --output-dir "$OUTPUT_DIR"
end=$(date +%s)
echo "[main job] training + evaluation: $((trained - start)) s, with the pictures: $((end - start)) s"
echo "[main job] outputs in $OUTPUT_DIR: metrics.json, model_final.pth, loss_curve.png, predictions_val.png"
