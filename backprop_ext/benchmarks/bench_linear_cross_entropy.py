"""Language-model head + cross-entropy: linear_cross_entropy (row blocks, no logits) vs torch's
unfused F.cross_entropy(F.linear(x, W), target), mean reduction, on the same tensors.

Shapes (N rows, H features, V classes): CPU N = 2048, H = 1024, V = 32000, float32; CUDA
N = 8192, H = 4096, V = 128256 (Llama-3's vocabulary), bfloat16. `--sizes` sets N.

Directions: fwd (the loss under torch.no_grad) and fwd+bwd (a training step: the loss and the
gradients of x and W by torch.autograd.grad), as in common.measure. There is no "bwd" row: with
gradients required, our forward computes them (the backward only scales them by the loss's
gradient), so the backward alone measures nothing comparable.

Memory, for the fwd+bwd step, ours and torch's, above what existed before it (x, W, target):
    peak MB      the step's peak: the allocator's, on CUDA torch.cuda.max_memory_allocated(), on
                 CPU backprop_ext.checkpoint.memory.cpu_peak_bytes() (AllocatorPeak).
                 It includes the gradients the step returns (x's and W's: the same on both sides).
    grad_bytes   (JSON/CSV) those gradients' bytes: peak - grad_bytes is the memory beyond them.

The chunk sweep (op "linear_cross_entropy[chunk=K]") runs the fwd+bwd step at several chunk sizes,
each against torch's unfused step timed beside it (single calls in alternating pairs: fewer
samples than the main rows, so read its times as a trend); `--plot-memory PNG` draws peak memory
against the chunk size with torch's as a line.

TFLOP/s count the GEMMs: 2 N H V forward, 6 N H V for fwd+bwd.
"""

from __future__ import annotations

import dataclasses
import statistics

import torch
import torch.nn.functional as TF

from .. import functional as BF
from ..ops.linear_cross_entropy import default_chunk_size
from .common import Row, measure, peak_bytes, time_ms

FAMILY = "linear_cross_entropy"
SIZES_HELP = "linear_cross_entropy: rows N (tokens) of the (N, H) x (V, H) head"
OPS = ("linear_cross_entropy", "chunk_sweep")
DEFAULT_SHAPES = {"cpu": (2048, 1024, 32000), "cuda": (8192, 4096, 128256)}  # (N, H, V)
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}
SWEEP = {"cpu": (64, 128, 256, 512, 1024, 2048), "cuda": (256, 512, 1024, 2048, 4096, 8192)}
FLOP_MULTIPLE = {"fwd": 1, "fwd+bwd": 3}  # of 2 N H V


@dataclasses.dataclass
class HeadRow(Row):
    grad_bytes: int = 0  # the gradients the fwd+bwd step returns (part of both peaks)
    chunk: int = 0  # rows per block (ours)


def ours_fn(chunk_size=None):
    options = BF.LinearCrossEntropyOptions(batch_chunk_size=chunk_size)
    return lambda x, w, t: BF.linear_cross_entropy(x, w, t, options=options)


def torch_fn(x, w, t):
    return TF.cross_entropy(TF.linear(x, w), t)


def _step(fn, x, w, t):
    """A training step's work: the loss and the gradients of x and w."""
    def step():
        return torch.autograd.grad(fn(x, w, t), (x, w))
    return step


def alternating_ms(ours, theirs, device: str, pairs: int) -> tuple[float, float]:
    """Median ms of single calls of ours and theirs after one warm-up each, in pairs whose order
    alternates (ours first, then theirs first): a sweep point costs a few calls, not rounds."""
    ours()
    theirs()
    times: dict = {ours: [], theirs: []}
    for i in range(pairs):
        for fn in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            times[fn].append(time_ms(fn, device, reps=1, warmup=0))
    return statistics.median(times[ours]), statistics.median(times[theirs])


def _inputs(n, h, v, device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, h, device=device, dtype=dtype, generator=g).requires_grad_()
    w = (torch.randn(v, h, device=device, dtype=dtype, generator=g) / h ** 0.5).requires_grad_()
    t = torch.randint(0, v, (n,), device=device, generator=g)
    return x, w, t


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    ops = list(ops or OPS)
    n0, h, v = DEFAULT_SHAPES[kind]
    # Each call is seconds long on a CPU: a few calls a round, several rounds.
    reps = max(2, reps // 10) if kind == "cpu" else reps
    rows = []
    for dtype_name in dtypes or DEFAULT_DTYPES[kind]:
        dtype = getattr(torch, dtype_name)
        for n in sizes or [n0]:
            x, w, t = _inputs(n, h, v, device, dtype)
            grad_bytes = (x.numel() + w.numel()) * x.element_size()
            chunk = default_chunk_size(n, v, dtype, kind)
            shape = f"N={n},H={h},V={v}"
            common = dict(family=FAMILY, dtype=dtype_name, device=device, grad_bytes=grad_bytes)
            torch_peak = peak_bytes(_step(torch_fn, x, w, t), device)
            if "linear_cross_entropy" in ops:
                comp = torch.compile(torch_fn) if compiled else None
                times = measure(ours_fn(), torch_fn, (x, w, t), torch.ones((), device=device),
                                device, reps, rounds=4, compiled=comp,
                                directions=("fwd", "fwd+bwd"))
                peak = peak_bytes(_step(ours_fn(), x, w, t), device)
                for direction, (ms, tms, cms) in times.items():
                    mem = direction == "fwd+bwd"
                    rows.append(HeadRow(
                        op="linear_cross_entropy", shape=f"{shape},chunk={chunk}",
                        direction=direction, ms=ms, torch_ms=tms, compiled_ms=cms,
                        flops=FLOP_MULTIPLE[direction] * 2 * n * h * v, chunk=chunk,
                        peak_bytes=peak if mem else 0, torch_peak_bytes=torch_peak if mem else 0,
                        **common))
            if "chunk_sweep" in ops:
                for c in [c for c in SWEEP[kind] if c < n] + [n]:
                    ours = _step(ours_fn(c), x, w, t)
                    peak = peak_bytes(ours, device)
                    ms, tms = alternating_ms(ours, _step(torch_fn, x, w, t), device,
                                             pairs=max(2, reps // 5) if kind == "cpu" else reps)
                    rows.append(HeadRow(
                        op=f"linear_cross_entropy[chunk={c}]", shape=shape, direction="fwd+bwd",
                        ms=ms, torch_ms=tms, flops=3 * 2 * n * h * v, chunk=c, peak_bytes=peak,
                        torch_peak_bytes=torch_peak, **common))
    return rows


def plot_memory(path: str, rows: list[Row]) -> bool:
    """Peak memory of the fwd+bwd step against the chunk size (the chunk sweep's rows), torch's
    unfused step as a horizontal line, one curve per shape and dtype. False if there are none."""
    sweep = [r for r in rows if r.family == FAMILY and r.op.startswith("linear_cross_entropy[")]
    if not sweep:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    groups: dict[tuple, list] = {}
    for r in sweep:
        groups.setdefault((r.shape, r.dtype), []).append(r)
    for (shape, dtype), rs in groups.items():
        rs.sort(key=lambda r: r.chunk)
        line, = ax.plot([r.chunk for r in rs], [r.peak_bytes / 1e6 for r in rs], marker="o",
                        label=f"linear_cross_entropy {shape} {dtype}")
        ax.axhline(rs[0].torch_peak_bytes / 1e6, color=line.get_color(), linestyle="--",
                   label="torch F.linear + F.cross_entropy")
        ax.axhline(rs[0].grad_bytes / 1e6, color=line.get_color(), linestyle=":",
                   label="the gradients of x and W alone")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk_size (rows per block)")
    ax.set_ylabel("peak memory of fwd+bwd (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True
