"""Gated family: the gated units alone, and the Llama MLP block they sit in.

    swiglu, geglu      BF.swiglu(g, u) / BF.geglu(g, u, "tanh") vs torch's TF.silu(g) * u /
                       TF.gelu(g, approximate="tanh") * u, on 1-d tensors (`--sizes`: elements).
                       Ideal traffic: fwd 3 passes (read g and u, write y), bwd 5 (read the
                       gradient, g and u; write two gradients), fwd+bwd 8.
    llama_mlp          bnn.GatedMLP's forward vs transformers' LlamaMLP's,
                       down_proj(silu(gate_proj(x)) * up_proj(x)), each as functions of x and the
                       three weights (the gradients of all four are taken); bias-free; x of
                       (tokens, hidden). `--sizes` sets the tokens. TFLOP/s count the three
                       GEMMs (2 N H I each; 3x for fwd+bwd). The peak-memory columns (fwd+bwd
                       only) are what the step's forward keeps for backward, measured with
                       saved-tensor hooks: ours keeps gate_proj's and up_proj's outputs, torch
                       also silu(gate).

Shapes: CPU hidden 512, intermediate 1408, 2048 tokens, float32; CUDA hidden 4096, intermediate
14336, 8192 tokens, bfloat16 (the issue's H200 target shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import functional as BF
from .. import nn as bnn
from .common import Row, dtypes_for, measure, rows_from

FAMILY = "gated"
SIZES_HELP = "gated: elements (swiglu, geglu) or tokens (llama_mlp)"
OPS = ("swiglu", "geglu", "llama_mlp")
DEFAULT_ELEMENTS = {"cpu": [1 << 24], "cuda": [1 << 28]}
MLP_SHAPES = {"cpu": (2048, 512, 1408), "cuda": (8192, 4096, 14336)}  # (tokens, hidden, inter.)
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}
PASSES = {"fwd": 3, "bwd": 5, "fwd+bwd": 8}
UNITS = {
    "swiglu": (BF.swiglu, lambda g, u: TF.silu(g) * u),
    "geglu": (lambda g, u: BF.geglu(g, u, "tanh"), lambda g, u: TF.gelu(g, approximate="tanh") * u),
}


# The block as functions of (x, gate_proj.weight, up_proj.weight, down_proj.weight), so that
# common.measure differentiates the weights too (a training step; with the weights closed over,
# autograd.grad(out, x) lets torch's mm skip their gradients, which a Function cannot see).
def _ours_mlp(x, gate, up, down):
    """GatedMLP.forward."""
    return BF.linear(BF.swiglu(BF.linear(x, gate), BF.linear(x, up)), down)


def _torch_mlp(x, gate, up, down):
    """LlamaMLP.forward."""
    return TF.linear(TF.silu(TF.linear(x, gate)) * TF.linear(x, up), down)


def saved_bytes(fn, x, params) -> int:
    """Bytes of the tensors fn(x)'s graph keeps for backward, beyond x and the Parameters."""
    seen = {}
    own = {t.data_ptr() for t in (x, *params)}

    def pack(t):
        seen[(t.data_ptr(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    del out
    return sum(n for (ptr, _), n in seen.items() if ptr not in own)


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    rows = []
    for dtype_name, dtype in dtypes_for(device, dtypes, DEFAULT_DTYPES):
        for name in ops or OPS:
            if name == "llama_mlp":
                rows += _mlp_rows(device, dtype, dtype_name, sizes, reps, compiled)
                continue
            ours, theirs = UNITS[name]
            for n in sizes or DEFAULT_ELEMENTS[kind]:
                g, u = (torch.randn(n, device=device, dtype=dtype) for _ in range(2))
                comp = torch.compile(theirs) if compiled else None
                times = measure(ours, theirs, (g, u), torch.randn_like(g), device, reps,
                                compiled=comp)
                rows += rows_from(times, FAMILY, name, f"({n},)", dtype_name, device,
                                  {d: p * n * g.element_size() for d, p in PASSES.items()})
    return rows


def _mlp_rows(device, dtype, dtype_name, sizes, reps, compiled):
    tokens, hidden, inter = MLP_SHAPES[device.split(":")[0]]
    torch.manual_seed(0)
    mlp = bnn.GatedMLP(hidden, inter, activation="silu", device=device, dtype=dtype)
    params = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    rows = []
    for n in sizes or [tokens]:
        x = torch.randn(n, hidden, device=device, dtype=dtype)
        grad = torch.randn_like(x)
        comp = torch.compile(_torch_mlp) if compiled else None
        times = measure(_ours_mlp, _torch_mlp, (x, *params), grad, device, max(reps // 4, 3),
                        compiled=comp)
        leaf = x.detach().requires_grad_()
        kept = saved_bytes(mlp, leaf, params)  # the module itself
        kept_torch = saved_bytes(lambda t: _torch_mlp(t, *params), leaf, params)
        for direction, (ms, tms, cms) in times.items():
            mem = direction == "fwd+bwd"
            rows.append(Row(family=FAMILY, op="llama_mlp", shape=f"({n},{hidden})x{inter}",
                            dtype=dtype_name, direction=direction, device=device, ms=ms,
                            torch_ms=tms, compiled_ms=cms,
                            flops=2 * n * hidden * inter * 3 * (3 if direction == "fwd+bwd"
                                                                else 2 if direction == "bwd"
                                                                else 1),
                            vs="LlamaMLP's ops", peak_bytes=kept if mem else 0,
                            torch_peak_bytes=kept_torch if mem else 0,
                            note="peak MB: what the forward keeps for backward" if mem else ""))
    return rows
