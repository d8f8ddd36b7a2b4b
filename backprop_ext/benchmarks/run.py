"""The benchmark runner: `python -m backprop_ext bench [--family activation] [--dtypes ...] ...`.

Prints a table (ours vs torch eager, and vs torch.compile on a GPU, with the share of the
measured device-copy bandwidth) and writes JSON/CSV/PNG on request; README's result tables are
generated from the JSON (python -m backprop_ext.benchmarks.readme). The directions fwd, bwd and
fwd+bwd mean the same in every family: see benchmarks/common.py.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import (
    bench_activation,
    bench_checkpoint,
    bench_distributed,
    bench_gated,
    bench_linear,
    bench_linear_cross_entropy,
    bench_overhead,
    bench_softmax,
    bench_train,
    bench_utils,
)
from .common import copy_bandwidth_gbps, environment, format_table, plot, write_csv, write_json

FAMILIES = {"activation": bench_activation, "checkpoint": bench_checkpoint,
            "distributed": bench_distributed, "gated": bench_gated, "linear": bench_linear,
            "linear_cross_entropy": bench_linear_cross_entropy, "overhead": bench_overhead,
            "softmax": bench_softmax, "train": bench_train, "utils": bench_utils}
# Families whose rows get their own plot (module.plot(path, rows)), not the bandwidth bars.
OWN_PLOTS = (bench_checkpoint, bench_train)
# Run only when asked for by name: training real models end to end takes about 20 minutes on a
# CPU, longer than every kernel family together.
ON_REQUEST = ("train",)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="backprop_ext bench", description=__doc__)
    p.add_argument("--family", nargs="*", choices=sorted(FAMILIES), default=None,
                   help="families to run (default: all but train, which runs on request)")
    p.add_argument("--ops", nargs="*", default=None, help="ops within the families")
    p.add_argument("--dtypes", nargs="*", default=None,
                   choices=["float64", "float32", "float16", "bfloat16"])
    p.add_argument("--sizes", nargs="*", type=int, default=None,
                   help="problem sizes, per family: " + "; ".join(
                       f.SIZES_HELP for f in FAMILIES.values()))
    p.add_argument("--ranks", nargs="*", type=int, default=None,
                   help="distributed: world sizes (default 2)")
    p.add_argument("--tensors", nargs="*", type=int, default=None,
                   help="distributed: numbers of gradient tensors (default 200 CPU, 288 GPU)")
    p.add_argument("--models", nargs="*", default=None, choices=bench_train.MODELS,
                   help="train: the transformers models to train (default: all)")
    p.add_argument("--rounds", type=int, default=None,
                   help="train: fresh-process runs of each configuration (default 3; --quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="train: the memory-budget row's fraction of the plain step's peak "
                   f"(default {bench_train.DEFAULT_BUDGET})")
    p.add_argument("--quick", action="store_true",
                   help="train: a tiny configuration that runs in seconds (for tests)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile columns (GPU)")
    p.add_argument("--json", help="write rows and environment as JSON")
    p.add_argument("--csv", help="write rows as CSV")
    p.add_argument("--plot", help="write a PNG of achieved bandwidth (checkpoint family: of "
                   "memory against time; train family: loss curves, memory and time bars; to this "
                   "path, or beside it as <name>-<family>.png when other families ran too)")
    p.add_argument("--plot-memory", help="write a PNG of linear_cross_entropy's peak memory "
                   "against its chunk size (the chunk_sweep rows)")
    return p


def main(args: argparse.Namespace) -> int:
    device = args.device
    compiled = device.startswith("cuda") and not args.no_compile
    copy = copy_bandwidth_gbps(device) if device.startswith("cuda") else None
    env = environment(device)
    print("# " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if copy:
        print(f"# measured device copy bandwidth: {copy:.0f} GB/s")
    rows = []
    for name in args.family or sorted(set(FAMILIES) - set(ON_REQUEST)):
        family_ops = [o for o in (args.ops or []) if o in FAMILIES[name].OPS] or None
        if args.ops and not family_ops:
            continue
        module = FAMILIES[name]
        extra = {k: getattr(args, k) for k in getattr(module, "EXTRA_ARGS", ())}
        rows += module.run(device, args.dtypes, args.sizes, family_ops, args.reps, compiled,
                           **extra)
    print(format_table(rows, copy))
    if args.json:
        write_json(args.json, rows, env, copy)
    if args.csv:
        write_csv(args.csv, rows, copy)
    if args.plot:
        own = {m.FAMILY: m for m in OWN_PLOTS}
        others = [r for r in rows if r.family not in own]
        if others:
            plot(args.plot, others, copy)
        ran = [f for f in own if any(r.family == f for r in rows)]
        for family in ran:
            stem, dot, ext = args.plot.rpartition(".")
            several = others or len(ran) > 1
            path = f"{stem}-{family}.{ext}" if several and dot else args.plot
            own[family].plot(path, [r for r in rows if r.family == family])
    if args.plot_memory and not bench_linear_cross_entropy.plot_memory(args.plot_memory, rows):
        print("# --plot-memory: no chunk_sweep rows were run (--family linear_cross_entropy)")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
