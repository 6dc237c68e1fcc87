#!/usr/bin/env bash
# One idempotent set-up for dimaskdino: creates .venv at the repository root and installs
# torch, torchvision, detectron2, the project's dependencies and the project itself
# (editable, with its compiled multi-scale deformable attention op).
# A second run with nothing to do finishes in seconds.
#
#   bash tools/setup.sh            # CPU op only (CUDA too if a GPU is visible)
#   FORCE_CUDA=1 bash tools/setup.sh   # also compile the CUDA kernels (needs nvcc)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
STAMP="$VENV/.dimaskdino-setup"

log() { echo "[setup] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)

# Hash of everything that decides what is installed: a changed requirement re-runs pip.
want="$(cat "$ROOT/requirements.txt" "$ROOT/tools/setup.sh" "$ROOT/tools/install_detectron2.py" | sha256sum | cut -d' ' -f1)-$TORCH_VERSION-$TORCHVISION_VERSION"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [ "$want" != "$have" ]; then
  if ! "$VPY" -c "import torch, torchvision, sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' and torchvision.__version__.split('+')[0]=='$TORCHVISION_VERSION' else 1)" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (a few minutes the first time)"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  fi
  log "installing the project's dependencies (requirements.txt)"
  "${PIP[@]}" install -q -r "$ROOT/requirements.txt"
  "$VPY" "$ROOT/tools/install_detectron2.py"
  echo "$want" > "$STAMP"
else
  log "dependencies already installed (delete $STAMP to force a re-install)"
  "$VPY" "$ROOT/tools/install_detectron2.py" --check
fi

# The compiled op: rebuilt only when a source under csrc/ or setup.py changed.
src_hash="$(cat "$ROOT/setup.py" $(find "$ROOT/csrc" -type f | sort) | sha256sum | cut -d' ' -f1)-${FORCE_CUDA:-0}"
if [ "$src_hash" != "$(cat "$VENV/.dimaskdino-op" 2>/dev/null || true)" ] || ! "$VPY" -c "import dimaskdino._C" 2>/dev/null; then
  log "building dimaskdino and its C++ op (FORCE_CUDA=${FORCE_CUDA:-0})"
  MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"
  echo "$src_hash" > "$VENV/.dimaskdino-op"
else
  log "dimaskdino op is up to date"
fi
"$VPY" -c "import dimaskdino, dimaskdino._C; from dimaskdino.layers import ms_deform_attn_backends; print('[setup] dimaskdino ready; op backends:', ms_deform_attn_backends())"
