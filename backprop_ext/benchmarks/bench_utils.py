"""Utilities: gradient clipping over many tensors, and the checkpointed MLP stack.

Clipping (ops clip_grad_norm_, get_total_norm, clip_grad_value_): one model-like set of
gradients (a few large matrices, many small vectors; CPU default 200 tensors, 2^24 float32
elements in all; GPU default 288 tensors, 1.21e9 float32 elements), ours vs torch.nn.utils' same
function (foreach where torch has it: CUDA; torch has no CPU foreach kernels). Ideal traffic:
clip_grad_norm_ 3 passes (read for the norm, read + write to scale), get_total_norm 1,
clip_grad_value_ 2. `--sizes` sets the total element count.

Checkpointed MLP (op ckpt_mlp): a stack of Linear + GELU layers (CPU default 16 layers, batch
512, width 256, float32; GPU default 16 layers, batch 8192, width 4096, bfloat16), one training
step (forward, sum, backward; gradients set to None first), CheckpointedSequential with the
default sqrt(32) segments, policy "full" and "selective", each against the plain stack (vs plain)
and against torch.utils.checkpoint.checkpoint_sequential(use_reentrant=False) with the same
segments (vs torch ckpt). Peak memory of the step: on GPU torch.cuda.max_memory_allocated()
above what was allocated before; on CPU the peak of the bytes held by tensors the step's ops
created (backprop_ext._memory.LiveTensorMemory: a dispatch mode that counts each new storage
once and subtracts it when freed). Parameters and the input are excluded on both.
"""

from __future__ import annotations

import torch

from .. import nn as bnn
from .. import utils as BU
from .._memory import LiveTensorMemory
from .common import Row, time_ms, time_pair

FAMILY = "utils"
SIZES_HELP = "utils: total gradient elements of the clipping workload (the MLP ignores it)"
OPS = ("clip_grad_norm_", "get_total_norm", "clip_grad_value_", "ckpt_mlp")
DEFAULT_CLIP = {"cpu": (200, 1 << 24), "cuda": (288, 1_210_000_000)}  # tensors, elements
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32"]}
DEFAULT_MLP = {"cpu": dict(depth=16, batch=512, width=256, dtype="float32"),
               "cuda": dict(depth=16, batch=8192, width=4096, dtype="bfloat16")}
# Ideal passes over the gradients per call.
PASSES = {"clip_grad_norm_": 3, "get_total_norm": 1, "clip_grad_value_": 2}


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


def _clip_fns(name: str, params: list[torch.Tensor], foreach):
    if name == "clip_grad_norm_":
        return (lambda: BU.clip_grad_norm_(params, 1.0),
                lambda: torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=foreach))
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
        ours, theirs = _clip_fns(name, params, foreach)
        ms, tms = time_pair(ours, theirs, device, reps)
        cms = time_ms(torch.compile(theirs), device, reps) if compiled else None
        rows.append(Row(family=FAMILY, op=name, shape=f"{n_tensors} tensors, {total:.3g} elems",
                        dtype=dtype_name, direction="clip", device=device, ms=ms, torch_ms=tms,
                        compiled_ms=cms, bytes=PASSES[name] * nbytes))
    return rows


# --- checkpointed MLP


def _mlp_modules(depth, width, device, dtype):
    torch.manual_seed(0)
    mods = []
    for _ in range(depth):
        mods += [torch.nn.Linear(width, width, device=device, dtype=dtype), bnn.GELU()]
    return mods


def _step(model, x):
    def step():
        for p in model.parameters():
            p.grad = None
        model(x).sum().backward()
    return step


def _peak_bytes(step, device) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with LiveTensorMemory() as mem:
        step()
    return mem.peak


class _TorchCheckpointSequential(torch.nn.Module):
    """torch.utils.checkpoint.checkpoint_sequential over the same modules and segments."""

    def __init__(self, seq: bnn.CheckpointedSequential):
        super().__init__()
        self.seq = seq

    def forward(self, x):
        return torch.utils.checkpoint.checkpoint_sequential(
            list(self.seq), len(self.seq.segment_bounds()), x, use_reentrant=False)


def _mlp_rows(device, dtype_name, reps):
    cfg = dict(DEFAULT_MLP[device.split(":")[0]])
    if dtype_name:
        cfg["dtype"] = dtype_name
    dtype = getattr(torch, cfg["dtype"])
    mods = _mlp_modules(cfg["depth"], cfg["width"], device, dtype)
    x = torch.randn(cfg["batch"], cfg["width"], device=device, dtype=dtype)
    plain = bnn.CheckpointedSequential(*mods, policy="none")
    variants = {"plain": plain,
                "torch ckpt": _TorchCheckpointSequential(bnn.CheckpointedSequential(*mods))}
    for policy in ("full", "selective"):
        variants[policy] = bnn.CheckpointedSequential(*mods, policy=policy)
    steps = {k: _step(m, x) for k, m in variants.items()}
    peaks = {k: _peak_bytes(s, device) for k, s in steps.items()}
    flops = 3 * 2 * cfg["batch"] * cfg["width"] ** 2 * cfg["depth"]  # GEMMs of fwd + bwd
    shape = f"{cfg['depth']}x(Linear+GELU) {cfg['batch']}x{cfg['width']}"
    rows = []
    for policy in ("full", "selective"):
        for vs in ("plain", "torch ckpt"):
            ms, tms = time_pair(steps[policy], steps[vs], device, reps)
            rows.append(Row(family=FAMILY, op=f"ckpt_mlp[{policy}]", shape=shape,
                            dtype=cfg["dtype"], direction="fwd+bwd", device=device, ms=ms,
                            torch_ms=tms, flops=flops, vs=vs, peak_bytes=peaks[policy],
                            torch_peak_bytes=peaks[vs]))
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
    if "ckpt_mlp" in ops:
        # A training step is long: fewer repetitions give the same precision.
        for dtype_name in dtypes or [None]:
            rows += _mlp_rows(device, dtype_name, max(3, reps // 4))
    return rows
