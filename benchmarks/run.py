"""Same as `python -m backprop_ext bench`; the benchmarks live in backprop_ext/benchmarks/."""

import sys

from backprop_ext.benchmarks.run import build_parser, main

if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
