"""Activation family: every row of the activation table at torch's default parameters, ours vs
torch.nn.functional's own function on the same tensors (quick_gelu, which torch lacks: x *
sigmoid(1.702 x) in torch's ops, as transformers computes it), in the directions of
common.measure.

Ideal traffic (passes over the tensor): fwd 2 (read x, write y), bwd 3 (read g and the saved
tensor, write the gradient), fwd+bwd 5.
"""

from __future__ import annotations

import torch

from ..ops.activation import ACTIVATIONS
from ..testing import activation_case
from .common import dtypes_for, measure, rows_from

FAMILY = "activation"
SIZES_HELP = "activation: element counts of a 1-d tensor"
DEFAULT_SIZES = {"cpu": [1 << 24], "cuda": [1 << 28]}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}
PASSES = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}

# op name (a row of the activation table) -> our function and torch's at torch's defaults
OPS = {name: activation_case(name) for name in ACTIVATIONS}


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    rows = []
    for dtype_name, dtype in dtypes_for(device, dtypes, DEFAULT_DTYPES):
        for n in sizes or DEFAULT_SIZES[kind]:
            x = torch.randn(n, device=device, dtype=dtype)
            g = torch.randn_like(x)
            for name in ops or OPS:
                case = OPS[name]
                comp = torch.compile(case.torch_own) if compiled else None
                times = measure(case.ours, case.torch_own, (x,), g, device, reps, compiled=comp)
                rows += rows_from(times, FAMILY, name, f"({n},)", dtype_name, device,
                                  {d: p * n * x.element_size() for d, p in PASSES.items()})
    return rows
