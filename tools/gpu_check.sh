#!/usr/bin/env bash
# GPU acceptance in one command, on a machine with a CUDA GPU (about 8 minutes at most):
#   1. build dimaskdino._C with FORCE_CUDA=1 in place (default arch list + the visible GPU's arch),
#   2. the op's GPU tests (every dtype against a float64 CPU reference, gradcheck, non-contiguous
#      and empty inputs, the deterministic-algorithms alert),
#   3. tools/gpu_check.py: CUDA vs CPU outputs of the model, AMP (float16, bfloat16) training,
#      DDP with NCCL when 2 GPUs are visible, op and R50 timings, a markdown table.
# Without a GPU it says so in one line and exits 0.
#
#   bash tools/gpu_check.sh [REPORT.md]     # default output/gpu_check.md
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
REPORT="${1:-$ROOT/output/gpu_check.md}"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[gpu-check] $PY cannot import torch: run bash tools/setup.sh first (or set PYTHON)"
  exit 1
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "[gpu-check] no CUDA GPU is visible: nothing to check on this machine (exit 0)"
  exit 0
fi

failed=()
step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  echo "[gpu-check] ---- $name (at most ${limit} s)"
  local start=$SECONDS
  if timeout "$limit" "$@"; then
    echo "[gpu-check] ---- $name: ok ($((SECONDS - start)) s)"
  else
    echo "[gpu-check] ---- $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

step "build the op with FORCE_CUDA=1" 240 \
  env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}" "$PY" setup.py -q build_ext --inplace
step "GPU tests of the op" 90 "$PY" -m pytest tests/test_ms_deform_attn.py -m gpu -q -p no:cacheprovider
step "model checks and timings" 330 "$PY" tools/gpu_check.py --report "$REPORT"

if [ ${#failed[@]} -gt 0 ]; then
  echo "[gpu-check] FAILED: ${failed[*]}"
  exit 1
fi
echo "[gpu-check] all checks passed; table in $REPORT"
