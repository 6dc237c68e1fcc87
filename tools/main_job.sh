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
# OpenMP threads: on an idle machine they spin while waiting for each other (fastest: 0.56 s per
# iteration against 0.73 s when they sleep); on a machine already busy with other work a spinning
# thread that lost its core stalls every parallel op (measured 5x slower iterations), so there
# they sleep (OMP_WAIT_POLICY=PASSIVE). "Busy": other processes used more than half a core over
# the last second. An OMP_WAIT_POLICY set by the caller is kept.
cpu_busy_cores() {
  local a b
  a=$(head -1 /proc/stat); sleep 1; b=$(head -1 /proc/stat)
  echo "$a" "$b" | awk '{n = (NF - 2) / 2; for (i = 2; i <= n + 1; i++) { t0 += $i; t1 += $(i + n + 1) }
    idle0 = $5 + $6; idle1 = $(5 + n + 1) + $(6 + n + 1);
    printf "%.2f", ((t1 - t0) - (idle1 - idle0)) / ((t1 - t0) / '"$(nproc)"') }'
}
if [ -z "${OMP_WAIT_POLICY:-}" ]; then
  busy=$(cpu_busy_cores 2>/dev/null || echo 0)
  if awk -v b="$busy" 'BEGIN {exit !(b > 0.5)}'; then
    export OMP_WAIT_POLICY=PASSIVE
    echo "[main job] other processes keep $busy cores busy: OpenMP threads will sleep while waiting (OMP_WAIT_POLICY=PASSIVE)"
  fi
fi
start=$(date +%s)
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUTPUT_DIR" "$@"
trained=$(date +%s)
"$PY" tools/plot_main_job.py --output-dir "$OUTPUT_DIR"
end=$(date +%s)
echo "[main job] training + evaluation: $((trained - start)) s, with the pictures: $((end - start)) s"
echo "[main job] outputs in $OUTPUT_DIR: metrics.json, model_final.pth, loss_curve.png, predictions_val.png"
