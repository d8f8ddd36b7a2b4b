#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment in .venv with torch and the test tools, then
# builds backprop_ext (CPU kernels, and CUDA kernels when a CUDA toolkit is present) in place.
# Safe to run again: it reuses .venv and rebuilds only what changed.
#
# Knobs: BACKPROP_EXT_TORCH (the torch requirement, default torch==2.14.1),
# BACKPROP_EXT_TORCHVISION (the torchvision built for it, default torchvision==0.29.1), PYTHON (the
# interpreter the environment is made from), VENV (its folder, default .venv),
# BACKPROP_EXT_FORCE_CPU=1 (CPU kernels only; see setup.py).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC=${BACKPROP_EXT_TORCH:-torch==2.14.1}
TORCHVISION_SPEC=${BACKPROP_EXT_TORCHVISION:-torchvision==0.29.1}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
# transformers, torchvision and timm: the real models convert() is tested on and the overhead
# benchmark's Llama (built from configs, no download). torchvision is built for one torch: its
# pin follows TORCH_SPEC's (BACKPROP_EXT_TORCHVISION).
python -m pip install -q "$TORCH_SPEC" "$TORCHVISION_SPEC" timm==1.0.31 transformers==5.24.0 numpy \
  ninja setuptools wheel pytest expecttest hypothesis matplotlib scikit-learn tqdm \
  ruff==0.17.6 clang-format==23.1.5  # the style checks CI runs (pyproject.toml, .clang-format)
# The extension build needs torch at build time, hence no build isolation.
MAX_JOBS=${MAX_JOBS:-$(nproc)} python -m pip install -q --no-build-isolation --no-deps -e .
python - <<'PY'
import backprop_ext
print(f"backprop_ext built; CUDA kernels compiled: {backprop_ext.cuda_built()}")
PY
