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
from .common import Row, measure

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
    for dtype_name in dtypes or DEFAULT_DTYPES[kind]:
        dtype = getattr(torch, dtype_name)
        for n in sizes or DEFAULT_SIZES[kind]:
            x = torch.randn(n, device=device, dtype=dtype)
            g = torch.randn_like(x)
            for name in ops or OPS:
                case = OPS[name]
                comp = torch.compile(case.torch_own) if compiled else None
                times = measure(case.ours, case.torch_own, (x,), g, device, reps, compiled=comp)
                for direction, (ms, tms, cms) in times.items():
                    rows.append(Row(family=FAMILY, op=name, shape=f"({n},)", dtype=dtype_name,
                                    direction=direction, device=device, ms=ms, torch_ms=tms,
                                    compiled_ms=cms,
                                    bytes=PASSES[direction] * n * x.element_size()))
    return rows
