#!/usr/bin/env bash
# The test suite against the oldest torch the package claims (pyproject: torch>=2.11), under
# Python 3.12, with the CPU kernels: what a user on that torch gets. CI runs it after the main
# leg; it also runs alone. The tree is copied (tracked files) to .ci-oldest-torch/src and built
# there, with its own environment in .ci-oldest-torch/venv, so that neither build (another
# Python, another torch) can mix with the main one.
#
# Knobs: BACKPROP_EXT_OLDEST_TORCH (default torch==2.11.0), BACKPROP_EXT_OLDEST_TORCHVISION
# (default torchvision==0.26.0, the one built for it), BACKPROP_EXT_OLDEST_PYTHON (default:
# the newest pyenv 3.12, else python3.12 on PATH); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

oldest_torch=${BACKPROP_EXT_OLDEST_TORCH:-torch==2.11.0}
oldest_torchvision=${BACKPROP_EXT_OLDEST_TORCHVISION:-torchvision==0.26.0}  # built for 2.11
find_python312() {
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V | tail -n 1 || true
  if python3.12 --version >/dev/null 2>&1; then command -v python3.12; fi
}
python312=${BACKPROP_EXT_OLDEST_PYTHON:-$(find_python312 | head -n 1)}
if [ -z "$python312" ]; then
  echo "oldest_torch.sh: no Python 3.12 found (pyenv or PATH; or set BACKPROP_EXT_OLDEST_PYTHON)" >&2
  exit 1
fi
echo "== $oldest_torch, $("$python312" --version), CPU kernels =="
copy=.ci-oldest-torch
rm -rf "$copy/src"
mkdir -p "$copy/src"
git ls-files -z | xargs -0 cp --parents -t "$copy/src"
(cd "$copy/src" && VENV="$PWD/../venv" PYTHON="$python312" BACKPROP_EXT_TORCH="$oldest_torch" \
  BACKPROP_EXT_TORCHVISION="$oldest_torchvision" \
  BACKPROP_EXT_FORCE_CPU=1 bash scripts/setup.sh)
(cd "$copy/src" && ../venv/bin/python -m pytest "$@")
