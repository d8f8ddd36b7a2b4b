"""The result tables of docs/RESULTS.md, generated from a benchmark JSON (`bench --json FILE`).

    python -m backprop_ext.benchmarks.readme FILE.json [--readme docs/RESULTS.md] [--section NAME]

Prints one markdown table per family; with --readme, replaces the text between the markers
<!-- bench:NAME --> and <!-- /bench:NAME --> in that file instead (NAME defaults to the JSON's
device kind: cpu or cuda), so the tables are never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def tables(data: dict) -> str:
    env = data["environment"]
    where = env.get("gpu") or f"CPU {env.get('cpu')}, {env.get('cpu_capability', '?')}"
    lines = [f"Measured with `python -m backprop_ext bench` on {where}"
             f" ({env['machine']}, {env['threads']} threads), torch {env['torch']}; x torch = "
             "torch's time / ours, in one run (above 1: ours is faster)."]
    if data.get("copy_gbps"):
        lines[0] += (f" Device copy bandwidth measured in the same run: "
                     f"{data['copy_gbps']:.0f} GB/s.")
    families: dict[str, list] = {}
    for row in data["rows"]:
        families.setdefault(row["family"], []).append(row)
    for family, rows in families.items():
        lines += ["", f"**{family}**", ""]
        gbps = any(r["bytes"] for r in rows)
        flops = any(r["flops"] for r in rows)
        mem = any(r.get("peak_bytes") for r in rows)
        head = ["op", "shape", "dtype", "dir", "ours ms", "torch ms", "x torch"]
        head += ["GB/s"] * gbps + ["TFLOP/s"] * flops + ["x memory"] * mem
        if any(r.get("compiled_ms") for r in rows):
            head += ["x compiled"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            op = r["op"] + (f" vs {r['vs']}" if r.get("vs") else "")
            cells = [op, r["shape"], r["dtype"], r["direction"], _fmt_ms(r["ms"]),
                     _fmt_ms(r["torch_ms"]), f"{r['speedup']:.2f}"]
            if gbps:
                cells.append(f"{r['gbps']:.1f}" if r["bytes"] else "-")
            if flops:
                cells.append(f"{r['tflops']:.2f}" if r["flops"] else "-")
            if mem:
                cells.append(f"{r['memory_ratio']:.2f}" if r.get("memory_ratio") else "-")
            if "x compiled" in head:
                cells.append(f"{r['speedup_compiled']:.2f}" if r.get("speedup_compiled") else "-")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m backprop_ext.benchmarks.readme",
                                description=__doc__.splitlines()[0])
    p.add_argument("json")
    p.add_argument("--readme")
    p.add_argument("--section")
    args = p.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    body = tables(data)
    if not args.readme:
        print(body)
        return 0
    name = args.section or data["environment"]["device"].split(":")[0]
    with open(args.readme) as f:
        text = f.read()
    with open(args.readme, "w") as f:
        f.write(replace_section(text, name, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
