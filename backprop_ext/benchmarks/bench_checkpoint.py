"""Checkpointing: what each policy, segment count and memory budget costs and saves on one
training step of a Linear + GELU (tanh) stack, against the plain step and torch.utils.checkpoint.

The workload is the issue's: a stack of `depth` blocks, each Linear(width, width) followed by
GELU(approximate="tanh"), one training step (forward, .sum(), backward) on a (batch, width)
input, with the parameters' gradients already allocated. CPU default: 16 blocks, batch 1024,
width 512, float32; GPU default: 16 blocks, batch 8192, width 4096, bfloat16. Two ways of
writing the block: "two modules" (bnn.Linear then bnn.GELU, what convert() makes) and "fused"
(bnn.Linear(..., activation=("gelu", "tanh")), what convert(fuse=True) makes).

Variants: plain; torch.utils.checkpoint.checkpoint(block, use_reentrant=False) on every block and
checkpoint_sequential (the references); Checkpoint(block, policy) on every block;
CheckpointedSequential(policy=..., segments=...) for every policy and several segment counts;
CheckpointedSequential(memory_budget=f) for several fractions (planned on the first step,
outside the timing).

Peak activation memory of the step: the allocator's peak above what was allocated before the
step, on GPU torch.cuda.max_memory_allocated(), on CPU checkpoint.memory.cpu_peak_bytes()
(AllocatorPeak: buffers inside kernels included). Parameters, their gradients and the input
excluded (allocated before).
Time: every variant is timed in each of several rounds, in turn (median of a few steps each);
its ratio to plain is the median over rounds of (its time / plain's time in that round), so a
noisy neighbour slows both sides of each ratio alike. On a CPU with one thread
(OMP_NUM_THREADS=1) the clock is the thread's CPU time, which other jobs on a shared machine do
not inflate; otherwise wall time (CUDA: synchronized).
"""

from __future__ import annotations

import statistics

import torch

from .. import nn as bnn
from ..checkpoint.memory import step_clock
from .common import Row, peak_bytes, sync

FAMILY = "checkpoint"
SIZES_HELP = "checkpoint: the MLP's width (layers are width x width)"
OPS = ("ckpt_mlp", "ckpt_mlp_fused")
DEFAULT_MLP = {"cpu": dict(depth=16, batch=1024, width=512, dtype="float32"),
               "cuda": dict(depth=16, batch=8192, width=4096, dtype="bfloat16")}
SEGMENTS = (2, 4, 8)  # in blocks
BUDGETS = (0.5, 0.35, 0.25)  # of the plain step's peak: the 2x and 4x, and one between


def _blocks(cfg, fused: bool, device, dtype) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    width = cfg["width"]
    if fused:
        return [bnn.Linear(width, width, activation=("gelu", "tanh"), device=device, dtype=dtype)
                for _ in range(cfg["depth"])]
    return [torch.nn.Sequential(bnn.Linear(width, width, device=device, dtype=dtype),
                                bnn.GELU(approximate="tanh")) for _ in range(cfg["depth"])]


def _modules(blocks) -> list[torch.nn.Module]:
    return [m for b in blocks for m in (b if isinstance(b, torch.nn.Sequential) else [b])]


class _TorchPerBlock(torch.nn.Module):
    """torch.utils.checkpoint.checkpoint(block, use_reentrant=False) on every block."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x


class _TorchSequential(torch.nn.Module):
    """torch.utils.checkpoint.checkpoint_sequential over the modules, in `segments` segments."""

    def __init__(self, modules, segments):
        super().__init__()
        self.mods = torch.nn.Sequential(*modules)
        self.segments = segments

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint_sequential(self.mods, self.segments, x,
                                                            use_reentrant=False)


def variants(blocks) -> dict[str, torch.nn.Module]:
    """Every configuration measured, by name, over the same blocks (shared parameters)."""
    mods = _modules(blocks)
    out = {"plain": torch.nn.Sequential(*mods),
           "torch ckpt every block": _TorchPerBlock(blocks),
           "torch ckpt_sequential 4": _TorchSequential(mods, 4),
           "full every block": torch.nn.Sequential(*[bnn.Checkpoint(b) for b in blocks]),
           "selective every block": torch.nn.Sequential(
               *[bnn.Checkpoint(b, policy="selective") for b in blocks]),
           "selective": bnn.CheckpointedSequential(*mods, policy="selective")}
    for policy in ("full", "full+selective"):
        for k in SEGMENTS:
            out[f"{policy} {k} segments"] = bnn.CheckpointedSequential(
                *mods, policy=policy, segments=k)
    for f in BUDGETS:
        out[f"budget {f:g}"] = bnn.CheckpointedSequential(*mods, memory_budget=f)
    return out


def _step(model, x):
    def step():
        model(x).sum().backward()
    return step


def _time_rounds(steps: dict, device: str, rounds: int, reps: int) -> dict[str, list[float]]:
    """Per variant, one median time (ms) of `reps` steps per round; variants in turn."""
    clock = step_clock(device)[0]
    times = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            samples = []
            for _ in range(reps):
                sync(device)
                t0 = clock()
                step()
                sync(device)
                samples.append((clock() - t0) * 1e3)
            times[name].append(statistics.median(samples))
    return times


def _rows(device, cfg, fused: bool, rounds: int, reps: int) -> list[Row]:
    dtype = getattr(torch, cfg["dtype"])
    blocks = _blocks(cfg, fused, device, dtype)
    x = torch.randn(cfg["batch"], cfg["width"], device=device, dtype=dtype)
    models = variants(blocks)
    steps = {name: _step(m, x) for name, m in models.items()}
    for step in steps.values():  # plans the budgets, allocates the gradients, warms up
        step()
    peaks = {name: peak_bytes(step, device) for name, step in steps.items()}
    times = _time_rounds(steps, device, rounds, reps)
    plain = times["plain"]
    form = "fused" if fused else "two modules"
    shape = f"{cfg['depth']}x(Linear+GELU tanh, {form}) {cfg['batch']}x{cfg['width']}"
    flops = 3 * 2 * cfg["batch"] * cfg["width"] ** 2 * cfg["depth"]  # GEMMs of fwd + bwd
    rows = []
    for name, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, plain))
        model = models[name]
        plan = ""
        if isinstance(model, bnn.CheckpointedSequential):
            plan = ", ".join(f"[{a},{b}) {level}" for a, b, level in model.plan().segments)
        rows.append(Row(family=FAMILY, op=name, shape=shape, dtype=cfg["dtype"],
                        direction="fwd+bwd", device=device, ms=statistics.median(t),
                        torch_ms=statistics.median(plain), flops=flops, vs="plain",
                        peak_bytes=peaks[name], torch_peak_bytes=peaks["plain"],
                        time_ratio=ratio, note=plan))
    return rows


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    rounds, per_round = max(3, reps // 4), 2
    rows = []
    print(f"# checkpoint family: timed by {step_clock(device)[1]}")
    for op in ops or OPS:
        for dtype_name in dtypes or [None]:
            cfg = dict(DEFAULT_MLP[kind])
            if dtype_name:
                cfg["dtype"] = dtype_name
            if sizes:
                cfg["width"] = sizes[0]
            rows += _rows(device, cfg, op == "ckpt_mlp_fused", rounds, per_round)
    print(format_tradeoff(rows))
    return rows


def format_tradeoff(rows: list[Row]) -> str:
    """Time and memory of each variant relative to the plain step, per workload."""
    lines = []
    for shape in dict.fromkeys(r.shape for r in rows):
        lines.append(f"\n{shape}, {rows[0].dtype}, {rows[0].device}")
        lines.append(f"{'variant':<28}{'ms':>10}{'time vs plain':>15}{'peak MiB':>11}"
                     f"{'memory vs plain':>17}")
        for r in (r for r in rows if r.shape == shape):
            lines.append(f"{r.op:<28}{r.ms:>10.2f}{100 * (r.time_ratio - 1):>+14.1f}%"
                         f"{r.peak_bytes / 2 ** 20:>11.1f}{r.memory_ratio:>16.2f}x"
                         + (f"   {r.note}" if r.note else ""))
    return "\n".join(lines)


def _short(name: str) -> str:
    """A plot label: "full+selective 4 segments" -> "f+s 4", "full every block" -> "full/blk"."""
    for long, short in (("full+selective", "f+s"), ("selective", "sel"), (" every block", "/blk"),
                        (" segments", ""), ("torch ckpt_sequential", "torch seq"),
                        ("torch ckpt", "torch"), ("budget ", "budget ")):
        name = name.replace(long, short)
    return name


def plot(path: str, rows: list[Row]) -> None:
    """Memory against time, relative to the plain step, one point per variant; torch's
    checkpoint as the reference; one panel per way of writing the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in rows))
    fig, axes = plt.subplots(1, len(shapes), figsize=(7 * len(shapes), 5.5), squeeze=False)
    style = {"plain": ("k", "o"), "torch": ("0.4", "X"), "full": ("tab:blue", "s"),
             "full+selective": ("tab:purple", "D"), "selective": ("tab:green", "^"),
             "budget": ("tab:red", "*")}
    for ax, shape in zip(axes[0], shapes):
        seen = set()
        for i, r in enumerate(r for r in rows if r.shape == shape):
            kind = ("plain" if r.op == "plain" else "torch" if r.op.startswith("torch")
                    else "budget" if r.op.startswith("budget")
                    else "full+selective" if r.op.startswith("full+selective")
                    else "full" if r.op.startswith("full") else "selective")
            color, marker = style[kind]
            x, y = 100 * (r.time_ratio - 1), r.memory_ratio
            ax.scatter([x], [y], color=color, marker=marker, s=70 if kind != "budget" else 140,
                       zorder=3, label=None if kind in seen else kind)
            seen.add(kind)
            ax.annotate(_short(r.op), (x, y), textcoords="offset points", fontsize=7,
                        xytext=(6, 6 if i % 2 else -10))  # alternate sides: fewer overlaps
        ax.axhline(0.5, color="tab:green", linestyle=":", linewidth=1)
        ax.axhline(0.25, color="tab:purple", linestyle=":", linewidth=1)
        ax.axvline(10, color="tab:green", linestyle=":", linewidth=1)
        ax.axvline(35, color="tab:purple", linestyle=":", linewidth=1)
        ax.set_xlabel("time vs plain step (%)")
        ax.set_ylabel("peak activation memory / plain step's")
        ax.set_ylim(0, 1.1)
        ax.set_title(shape, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    first = rows[0]
    fig.suptitle(f"checkpointing trade-off, {first.device}, {first.dtype} (dotted: the targets, "
                 "2x less at +10 %, 4x less at +35 %)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
