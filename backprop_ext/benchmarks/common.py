"""Timing, bandwidth and reporting shared by every family's benchmark.

Times are medians: of CUDA-event timings of single calls on a GPU, of wall-clock timings of
single calls on the CPU. Ratios compare against torch measured in the same run, case by case, in
alternating rounds (each side goes first in every other round), so that a noisy neighbour, a
clock that ramps up or the order itself favours neither side.

The directions mean the same in every family (measure() times them):
    fwd       the forward call with autograd off: what inference costs.
    bwd       the backward pass alone: torch.autograd.grad from the output to the inputs that
              require grad, on a graph recorded once and retained, the Python of our Functions
              included: what a training step's backward costs.
    fwd+bwd   a forward that records the graph, then its backward, per call: a training step.
Rows that time something else say so in their `direction` (clipping: "clip") or `vs` column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from ..checkpoint.memory import cpu_peak_bytes


@dataclasses.dataclass
class Row:
    family: str
    op: str
    shape: str
    dtype: str
    direction: str  # fwd, bwd, fwd+bwd
    device: str
    ms: float  # ours
    torch_ms: float  # torch eager
    compiled_ms: float | None = None  # torch.compile of torch's op (GPU only)
    bytes: int = 0  # ideal traffic: every input read once, every output written once
    flops: int = 0
    vs: str = ""  # what torch_ms (and torch_peak_bytes) measured, when not torch's own op
    peak_bytes: int = 0  # ours: peak memory of the case (benchmarks that measure it)
    torch_peak_bytes: int = 0  # the comparison's peak memory
    time_ratio: float | None = None  # ours / the comparison's time, as the benchmark measured it
    note: str = ""  # what the case ran, when its name does not say (e.g. a checkpoint plan)

    @property
    def gbps(self) -> float:
        return self.bytes / self.ms / 1e6 if self.bytes else 0.0

    @property
    def tflops(self) -> float:
        return self.flops / self.ms / 1e9 if self.flops else 0.0

    @property
    def speedup(self) -> float:
        """torch eager time / our time: above 1 means we are faster."""
        return self.torch_ms / self.ms

    @property
    def memory_ratio(self) -> float | None:
        """our peak memory / the comparison's: below 1 means we use less."""
        return self.peak_bytes / self.torch_peak_bytes if self.torch_peak_bytes else None

    @property
    def speedup_compiled(self) -> float | None:
        return None if self.compiled_ms is None else self.compiled_ms / self.ms

    def as_dict(self, copy_gbps: float | None = None) -> dict:
        d = dataclasses.asdict(self)
        d.update(gbps=self.gbps, tflops=self.tflops, speedup=self.speedup,
                 speedup_compiled=self.speedup_compiled, memory_ratio=self.memory_ratio)
        if copy_gbps and self.bytes:
            d["copy_share"] = self.gbps / copy_gbps
        return d


def dtypes_for(device: str, dtypes, defaults: dict) -> list[tuple[str, torch.dtype]]:
    """(name, dtype) for each dtype asked for, or the family's defaults for the device's kind."""
    return [(name, getattr(torch, name)) for name in dtypes or defaults[device.split(":")[0]]]


def rows_from(times: dict, family: str, op: str, shape: str, dtype_name: str, device: str,
              nbytes: dict) -> list[Row]:
    """One Row per direction of measure()'s `times`, with nbytes[direction] bytes moved."""
    return [Row(family=family, op=op, shape=shape, dtype=dtype_name, direction=direction,
                device=device, ms=ms, torch_ms=tms, compiled_ms=cms, bytes=nbytes[direction])
            for direction, (ms, tms, cms) in times.items()]


def sync(device: str) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_bytes(step: Callable[[], object], device: str) -> int:
    """Peak memory of step() above what was allocated before it: the allocator's, on CUDA
    torch.cuda.max_memory_allocated(), on the CPU checkpoint.memory.cpu_peak_bytes()."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    return cpu_peak_bytes(step)


def time_ms(fn: Callable[[], object], device: str, reps: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one call of fn."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    if device.startswith("cuda"):
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def time_pair(ours: Callable, theirs: Callable, device: str, reps: int = 20, rounds: int = 4):
    """Median times of ours and theirs over `rounds` rounds of `reps` calls, each side first in
    every other round; the median of the rounds' medians."""
    a, b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            a.append(time_ms(ours, device, reps))
            b.append(time_ms(theirs, device, reps))
        else:
            b.append(time_ms(theirs, device, reps))
            a.append(time_ms(ours, device, reps))
    return statistics.median(a), statistics.median(b)


def measure(ours: Callable, theirs: Callable, inputs, grad: torch.Tensor, device: str,
            reps: int = 20, rounds: int = 4, compiled: Callable | None = None,
            directions=("fwd", "bwd", "fwd+bwd")) -> dict[str, tuple]:
    """{direction: (ours ms, torch ms, compiled ms or None)} for fn(*inputs), by the module's
    definition of the directions. Floating inputs get gradients; others (targets) do not.
    `grad` is the gradient of the output."""
    out = {}
    leaves = [t.detach().requires_grad_() if t.is_floating_point() else t for t in inputs]
    diff = [t for t in leaves if t.requires_grad]

    def timed(make, with_compiled=True):
        ms, tms = time_pair(make(ours), make(theirs), device, reps, rounds)
        with_compiled = with_compiled and compiled is not None
        return ms, tms, time_ms(make(compiled), device, reps) if with_compiled else None

    if "fwd" in directions:
        def fwd(fn):
            def call():
                with torch.no_grad():
                    fn(*inputs)
            return call
        out["fwd"] = timed(fwd)
    if "bwd" in directions:
        graphs = {fn: fn(*leaves) for fn in (ours, theirs)}
        out["bwd"] = timed(lambda fn: lambda: torch.autograd.grad(graphs[fn], diff, grad,
                                                                  retain_graph=True),
                           with_compiled=False)
        del graphs
    if "fwd+bwd" in directions:
        out["fwd+bwd"] = timed(lambda fn: lambda: torch.autograd.grad(fn(*leaves), diff, grad))
    return out


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 30) -> float:
    """Measured device copy bandwidth (read + write), the ceiling for memory-bound kernels."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=20)
    return 2 * nbytes / ms / 1e6


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine(), "threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return env


def _fmt_ms(ms: float) -> str:
    """Three decimals; three significant digits below 0.1 ms (per-call overheads are µs)."""
    return f"{ms:.3f}" if ms >= 0.1 else f"{ms:.3g}"


def format_table(rows: list[Row], copy_gbps: float | None = None) -> str:
    with_vs = any(r.vs for r in rows)
    with_mem = any(r.peak_bytes for r in rows)
    head = ["op", "shape", "dtype", "dir"] + (["vs"] if with_vs else []) + [
        "ours ms", "torch ms", "x torch"]
    gpu = any(r.compiled_ms is not None for r in rows)
    if gpu:
        head += ["compiled ms", "x compiled"]
    head += ["GB/s", "TFLOP/s"]
    if copy_gbps:
        head += ["% copy"]
    if with_mem:
        head += ["peak MB", "torch peak MB", "x mem"]
    lines = [head]
    for r in rows:
        line = [r.op, r.shape, r.dtype, r.direction] + ([r.vs or "torch"] if with_vs else []) + [
            _fmt_ms(r.ms), _fmt_ms(r.torch_ms), f"{r.speedup:.2f}"]
        if gpu:
            line += ["-" if r.compiled_ms is None else _fmt_ms(r.compiled_ms),
                     "-" if r.compiled_ms is None else f"{r.speedup_compiled:.2f}"]
        line += [f"{r.gbps:.1f}" if r.bytes else "-", f"{r.tflops:.1f}" if r.flops else "-"]
        if copy_gbps:
            line += [f"{100 * r.gbps / copy_gbps:.0f}%" if r.bytes else "-"]
        if with_mem:
            line += [f"{r.peak_bytes / 1e6:.1f}" if r.peak_bytes else "-",
                     f"{r.torch_peak_bytes / 1e6:.1f}" if r.torch_peak_bytes else "-",
                     f"{r.memory_ratio:.2f}" if r.memory_ratio is not None else "-"]
        lines.append(line)
    widths = [max(len(str(cells[i])) for cells in lines) for i in range(len(head))]
    out = []
    for i, cells in enumerate(lines):
        text_cols = 4 if with_vs else 3
        out.append("  ".join(str(c).rjust(w) if j >= text_cols else str(c).ljust(w)
                             for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str, rows: list[Row], env: dict, copy_gbps: float | None) -> None:
    with open(path, "w") as f:
        json.dump({"environment": env, "copy_gbps": copy_gbps,
                   "rows": [r.as_dict(copy_gbps) for r in rows]}, f, indent=2)


def write_csv(path: str, rows: list[Row], copy_gbps: float | None) -> None:
    dicts = [r.as_dict(copy_gbps) for r in rows]
    if not dicts:
        return
    keys = list(dicts[0].keys() | set().union(*dicts))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sorted(keys))
        w.writeheader()
        w.writerows(dicts)


def plot(path: str, rows: list[Row], copy_gbps: float | None) -> None:
    """Achieved GB/s per case, ours vs torch eager (and compiled), with the copy line on GPU."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mem = [r for r in rows if r.bytes]
    labels = [f"{r.op} {r.dtype} {r.direction}\n{r.shape}" for r in mem]
    ours = [r.gbps for r in mem]
    eager = [r.bytes / r.torch_ms / 1e6 for r in mem]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(mem)), 4.5))
    xs = range(len(mem))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], ours, width, label="backprop_ext")
    ax.bar([x + width / 2 for x in xs], eager, width, label="torch eager")
    comp = [(i, r.bytes / r.compiled_ms / 1e6) for i, r in enumerate(mem) if r.compiled_ms]
    if comp:
        ax.scatter([i for i, _ in comp], [g for _, g in comp], color="k", marker="_", s=200,
                   label="torch.compile", zorder=3)
    if copy_gbps:
        ax.axhline(copy_gbps, color="r", linestyle="--", label=f"device copy {copy_gbps:.0f} GB/s")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("achieved GB/s (ideal traffic)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
