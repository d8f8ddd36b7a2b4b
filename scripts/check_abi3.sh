#!/usr/bin/env bash
# Builds the limited-API (abi3) wheel in a scratch copy of the tree (CPU kernels, the DEFAULT ISA
# only, to keep it short), checks with abi3audit that it uses nothing outside Python's stable ABI
# (3.10+), and imports it for a smoke test. Uses .venv (scripts/setup.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 tar -c | tar -x -C "$work"
"$PY" -m pip install -q abi3audit
(cd "$work" && BACKPROP_EXT_ABI3=1 BACKPROP_EXT_FORCE_CPU=1 BACKPROP_EXT_CPU_ISAS=DEFAULT \
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$PY" -m pip wheel -q --no-build-isolation --no-deps -w dist .)
wheel=$(ls "$work"/dist/*.whl)
case "$wheel" in *-cp310-abi3-*) ;; *) echo "not an abi3 wheel: $wheel"; exit 1 ;; esac
"$PY" -m abi3audit --assume-minimum-abi3 3.10 "$wheel"
mkdir "$work/site" && (cd "$work/site" && "$PY" -m zipfile -e "$wheel" .)
(cd "$work/site" && PYTHONPATH="$work/site" "$PY" - <<'PY'
import torch
import backprop_ext
import backprop_ext.functional as BF
assert backprop_ext._C.__file__.endswith(".abi3.so"), backprop_ext._C.__file__
x = torch.randn(64, dtype=torch.float64)
torch.testing.assert_close(BF.gelu(x), torch.nn.functional.gelu(x))
print("abi3 wheel OK:", backprop_ext._C.__file__.rsplit("/", 1)[-1])
PY
)
echo "checked $(basename "$wheel")"
