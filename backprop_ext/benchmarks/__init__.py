"""Benchmarks: one module per family (bench_<family>.py), shared timing in common.py, and the
runner in run.py (`python -m backprop_ext bench`, or `python benchmarks/run.py`)."""
