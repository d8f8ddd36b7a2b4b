#!/usr/bin/env bash
# On the GPU machine: two builds of the extension side by side, to decide between kernel variants
# in one call. A is the extension in the tree (cross-built from this checkout and carried, as for
# gpu_check.sh); B is a second build of the same Python tree, carried as a file (cross-build the
# variant's branch in a worktree with its own GPU_BUILD_CACHE, copy its .so under an ignored path,
# e.g. build/ab/B.so, and name that path in the run's carry too).
#
# Usage: bash scripts/gpu_ab.sh PATH/TO/B.so [bench families, default: activation gated linear
#        softmax utils]
# Runs B's GPU tests of those families, then the benchmarks A, B, A, B (alternating, so that a
# drift of the machine falls on both), and prints per row the median time of each and B / A.
# Logs and JSON under $OUT. The tree's extension is A again when the script ends.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
so=backprop_ext/_C.cpython-312-x86_64-linux-gnu.so
b_so=${1:?usage: gpu_ab.sh PATH/TO/B.so [families...]}
shift
families=${*:-activation gated linear softmax utils}
work=$(mktemp -d)
cp "$so" "$work/A.so"
cp "$b_so" "$work/B.so"
trap 'cp "$work/A.so" "$so"' EXIT

use() { cp "$work/$1.so" "$so"; }

use B
tests=()
for f in $families; do [ -f "tests/test_$f.py" ] && tests+=("tests/test_$f.py"); done
python -m pytest -q -x -m "not slow" "${tests[@]}" 2>&1 | tail -15 | tee "$OUT/ab_tests_B.log"

for round in 1 2; do
  for v in A B; do
    use $v
    python -m backprop_ext bench --family $families --no-compile \
      --json "$OUT/ab_${v}_$round.json" >"$OUT/ab_${v}_$round.log" 2>&1 ||
      { echo "bench $v round $round failed:"; tail -20 "$OUT/ab_${v}_$round.log"; }
  done
done
python scripts/ab_table.py "$OUT"/ab_A_*.json -- "$OUT"/ab_B_*.json | tee "$OUT/ab_table.txt"
