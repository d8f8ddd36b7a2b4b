#!/usr/bin/env bash
# On the GPU machine (torch with CUDA preinstalled, no network): build in place with every core,
# run the GPU tests and the benchmarks, and leave logs in $OUT (default ./gpu_out).
# Usage: bash scripts/gpu_check.sh [pytest -k expression]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} 2>&1 | tee "$OUT/env.log"

# An extension cross-built elsewhere for this Python and torch (brought along, on PYTHONPATH) is
# used as it is; otherwise build here.
if python -c "import sys, backprop_ext; sys.exit(0 if backprop_ext.cuda_built() else 1)" 2>/dev/null; then
  echo "build: prebuilt extension with CUDA kernels, not rebuilt" | tee -a "$OUT/env.log"
else
  start=$(date +%s)
  MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    python -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1
  status=$?
  echo "build: exit $status in $(( $(date +%s) - start )) s" | tee -a "$OUT/env.log"
  [ $status -eq 0 ] || { tail -50 "$OUT/build.log"; exit $status; }
fi

python -m pytest -q -x -m "not slow" ${1:+-k "$1"} tests/ 2>&1 | tail -40 | tee "$OUT/tests.log"
python -m backprop_ext check 2>&1 | tail -5 | tee "$OUT/check.log"
python -m backprop_ext bench --json "$OUT/bench.json" --csv "$OUT/bench.csv" \
  --plot-memory "$OUT/linear_cross_entropy_memory.png" 2>&1 | tee "$OUT/bench.log"
