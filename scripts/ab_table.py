"""Side by side: benchmark JSON files (bench --json) of two builds, A and B, row by row.

    python scripts/ab_table.py A1.json A2.json ... -- B1.json B2.json ...

Per row (op, shape, dtype, direction): the median of A's times over its files, of B's, B / A
(below 1: B is faster), and torch's median time over all files with B's speed-up over torch.
Rows missing from one side are listed with a dash.
"""

from __future__ import annotations

import json
import statistics
import sys


def _rows(paths: list[str]) -> dict[tuple, dict[str, list[float]]]:
    times: dict[tuple, dict[str, list[float]]] = {}
    for path in paths:
        with open(path) as f:
            for r in json.load(f)["rows"]:
                key = (r["op"], r["shape"], r["dtype"], r["direction"])
                entry = times.setdefault(key, {"ms": [], "torch_ms": []})
                entry["ms"].append(r["ms"])
                entry["torch_ms"].append(r["torch_ms"])
    return times


def table(a_paths: list[str], b_paths: list[str]) -> str:
    a, b = _rows(a_paths), _rows(b_paths)
    lines = [f"{'op':<28} {'shape':<22} {'dtype':<9} {'dir':<8} {'A ms':>9} {'B ms':>9} "
             f"{'B/A':>6} {'x torch':>8}"]
    for key in list(a) + [k for k in b if k not in a]:
        ma = statistics.median(a[key]["ms"]) if key in a else None
        mb = statistics.median(b[key]["ms"]) if key in b else None
        torch_ms = statistics.median(a.get(key, {"torch_ms": []})["torch_ms"]
                                     + b.get(key, {"torch_ms": []})["torch_ms"])
        ratio = f"{mb / ma:6.3f}" if ma and mb else f"{'-':>6}"
        speedup = f"{torch_ms / mb:8.2f}" if mb else f"{'-':>8}"
        op, shape, dtype, direction = key
        lines.append(f"{op:<28} {shape:<22} {dtype:<9} {direction:<8} "
                     f"{ma if ma is not None else float('nan'):9.4f} "
                     f"{mb if mb is not None else float('nan'):9.4f} {ratio} {speedup}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit(__doc__)
    cut = argv.index("--")
    print(table(argv[:cut], argv[cut + 1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
