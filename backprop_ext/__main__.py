"""Command line: `python -m backprop_ext {demo,check,bench}` (also installed as `backprop-ext`)."""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="backprop-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small MLP with our layers next to plain torch")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--batch", type=int, default=64)
    demo.add_argument("--plot", help="write the two loss curves to this PNG")
    demo.add_argument("--no-check", action="store_true", help="skip the gradient checks")
    demo.add_argument("--full", action="store_true",
                      help="print the gradient checks as the full table (op x check), not one "
                      "line per op")

    sub.add_parser("check", help="gradcheck, gradgradcheck, jvp and parity for every op")

    from .benchmarks.run import build_parser

    build_parser(sub.add_parser("bench", help="benchmark every op against torch"))

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run

        res = run(args.device, args.epochs, args.batch, check=not args.no_check, plot=args.plot,
                  full=args.full)
        ok = res["max_loss_diff"] < 1e-3 and res.get("checks_ok", True)
        return 0 if ok else 1
    if args.command == "check":
        from .check import main as check_main

        return check_main()
    from .benchmarks.run import main as bench_main

    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
