"""Utilities: gradient clipping over many tensors. (Checkpointing: bench_checkpoint.py.)

Clipping (ops clip_grad_norm_, get_total_norm, clip_grad_value_): one model-like set of
gradients (a few large matrices, many small vectors; CPU default 200 tensors, 2^24 float32
elements in all; GPU default 288 tensors, 1.21e9 float32 elements), ours vs torch.nn.utils' same
function (foreach where torch has it: CUDA; torch has no CPU foreach kernels). Ideal traffic:
clip_grad_norm_ 3 passes (read for the norm, read + write to scale), get_total_norm 1,
clip_grad_value_ 2. `--sizes` sets the total element count. clip_grad_norm_ clips on every call
(max_norm 0.9x the norm the gradients have by then); clip_grad_norm_unclipped is the step whose
norm is within max_norm (1e30), where ours reads the gradients once and leaves them alone (the
coefficient is exactly 1) and torch multiplies them by 1.
"""

from __future__ import annotations

import torch

from .. import utils as BU
from .common import Row, time_ms, time_pair

FAMILY = "utils"
SIZES_HELP = "utils: total gradient elements of the clipping workload"
OPS = ("clip_grad_norm_", "clip_grad_norm_unclipped", "get_total_norm", "clip_grad_value_")
DEFAULT_CLIP = {"cpu": (200, 1 << 24), "cuda": (288, 1_210_000_000)}  # tensors, elements
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32"]}
# Ideal passes over the gradients per call.
PASSES = {"clip_grad_norm_": 3, "clip_grad_norm_floor": 3, "clip_grad_norm_unclipped": 1,
          "get_total_norm": 1, "clip_grad_value_": 2}


# --- clipping


def model_like_sizes(n_tensors: int, total: int, seed: int = 0) -> list[int]:
    """n_tensors sizes summing to about `total`, as in a model's parameters(): every third is a
    weight matrix (together almost all the elements, spread over a 16x range), the others small
    bias/norm vectors of 64 to 4096 elements."""
    g = torch.Generator().manual_seed(seed)
    n_big = (n_tensors + 2) // 3  # indices 0, 3, 6, ...
    small = iter(int(x) for x in torch.randint(64, 4097, (n_tensors - n_big,), generator=g))
    left = max(n_big, total - 2080 * (n_tensors - n_big))
    weights = torch.exp(torch.rand(n_big, generator=g, dtype=torch.float64) * 2.77)
    big = [max(1, int(w)) for w in weights / weights.sum() * left]
    big[0] += left - sum(big)
    big = iter(big)
    return [next(big) if i % 3 == 0 else next(small) for i in range(n_tensors)]


def clip_fns(name: str, params: list[torch.Tensor], foreach):
    """(ours, torch's) for the clipping op `name` on `params`' gradients (plain or DTensors),
    taking no arguments."""
    if name == "clip_grad_norm_":
        # Each call (either side's) asks for 0.9x the norm the gradients have by then, so every
        # call really clips: with a fixed max_norm the first call brings the norm to it and the
        # coefficient of every later one is exactly 1 (the unclipped row's case).
        total = BU.get_total_norm([p.grad for p in params])
        limit = [float(total.full_tensor() if hasattr(total, "full_tensor") else total)]

        def clip(fn, **kwargs):
            def call():
                limit[0] *= 0.9
                return fn(params, limit[0], **kwargs)
            return call
        return clip(BU.clip_grad_norm_), clip(torch.nn.utils.clip_grad_norm_, foreach=foreach)
    if name == "clip_grad_norm_unclipped":
        return (lambda: BU.clip_grad_norm_(params, 1e30),
                lambda: torch.nn.utils.clip_grad_norm_(params, 1e30, foreach=foreach))
    if name == "get_total_norm":
        grads = [p.grad for p in params]
        return (lambda: BU.get_total_norm(grads),
                lambda: torch.nn.utils.get_total_norm(grads, foreach=foreach))
    return (lambda: BU.clip_grad_value_(params, 1e-3),
            lambda: torch.nn.utils.clip_grad_value_(params, 1e-3, foreach=foreach))


def _clip_rows(device, dtype_name, total, names, reps, compiled):
    n_tensors = DEFAULT_CLIP[device.split(":")[0]][0]
    dtype = getattr(torch, dtype_name)
    params = []
    for n in model_like_sizes(n_tensors, total):
        p = torch.nn.Parameter(torch.empty(n, device=device, dtype=dtype))
        p.grad = torch.randn(n, device=device, dtype=dtype)
        params.append(p)
    nbytes = sum(p.grad.numel() for p in params) * params[0].grad.element_size()
    foreach = True if device.startswith("cuda") else None
    rows = []
    for name in names:
        ours, theirs = clip_fns(name, params, foreach)
        ms, tms = time_pair(ours, theirs, device, reps)
        cms = time_ms(torch.compile(theirs), device, reps) if compiled else None
        rows.append(Row(family=FAMILY, op=name, shape=f"{n_tensors} tensors, {total:.3g} elems",
                        dtype=dtype_name, direction="clip", device=device, ms=ms, torch_ms=tms,
                        compiled_ms=cms, bytes=PASSES[name] * nbytes))
    return rows


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    ops = list(ops or OPS)
    rows = []
    clip_ops = [o for o in ops if o in PASSES]
    if clip_ops:
        for dtype_name in dtypes or DEFAULT_DTYPES[kind]:
            for total in sizes or [DEFAULT_CLIP[kind][1]]:
                rows += _clip_rows(device, dtype_name, total, clip_ops, reps, compiled)
    return rows
