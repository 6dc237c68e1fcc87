#!/usr/bin/env bash
# Compile and link the CUDA kernels of dimaskdino._C into a scratch folder, without touching the
# installed op: proves a .cu file compiles on machines that have nvcc but no GPU (CI).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mktemp -d /tmp/dimaskdino-cuda-build.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
cd "$ROOT"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-2}" \
  .venv/bin/python setup.py -q build_ext --build-temp "$OUT/temp" --build-lib "$OUT/lib"
so=$(find "$OUT/lib" -name '_C*.so' | head -n 1)
[ -n "$so" ] || { echo "[cuda-build] no extension was produced"; exit 1; }
# Load the scratch build by path (the CUDA runtime comes with torch, so it loads without a GPU)
# and ask it whether the CUDA kernels are in.
.venv/bin/python - "$so" <<'PY'
import importlib.util, sys
import torch  # noqa: F401  (loads the libraries the extension links to)
spec = importlib.util.spec_from_file_location("dimaskdino._C", sys.argv[1])
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
if not ext.compiled_with_cuda():
    sys.exit(f"[cuda-build] {sys.argv[1]} was built without the CUDA kernels")
PY
echo "[cuda-build] OK: $(basename "$so") built with the CUDA kernels ($(du -h "$so" | cut -f1))"
