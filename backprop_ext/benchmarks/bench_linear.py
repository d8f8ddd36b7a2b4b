"""Linear family: act(x W^T + b), ours fused vs torch's F.linear + F.<act> on the same tensors,
in the directions of common.measure.

TFLOP/s count the matrix products only: 2 M N K forward, 4 M N K backward, 6 M N K for both.
The GEMMs dominate and the two sides differ by a few percent at most: many short rounds (rather
than a few long ones), each side going first in every other one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import functional as BF
from .common import Row, measure

FAMILY = "linear"
SIZES_HELP = "linear: square problems, M = K = N = size"
DEFAULT_SHAPES = {"cpu": [(1024, 1024, 1024)], "cuda": [(8192, 4096, 16384)]}  # (M, K, N)
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}

FLOP_MULTIPLE = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}  # of 2 M N K

# name -> (our activation argument, torch's activation)
OPS = {
    "linear": (None, None),
    "linear_gelu": ("gelu", TF.gelu),
    "linear_gelu_tanh": ("gelu_tanh", lambda z: TF.gelu(z, approximate="tanh")),
    "linear_relu": ("relu", TF.relu),
    "linear_silu": ("silu", TF.silu),
}


def _ours_fn(spec):
    return lambda x, w, b: BF.linear(x, w, b, activation=spec)


def _torch_fn(act):
    if act is None:
        return TF.linear
    return lambda x, w, b: act(TF.linear(x, w, b))


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    rows = []
    kind = device.split(":")[0]
    shapes = [(s, s, s) for s in sizes] if sizes else DEFAULT_SHAPES[kind]
    for dtype_name in dtypes or DEFAULT_DTYPES[kind]:
        dtype = getattr(torch, dtype_name)
        for m, k, n in shapes:
            x = torch.randn(m, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
            b = torch.randn(n, device=device, dtype=dtype)
            g = torch.randn(m, n, device=device, dtype=dtype)
            flops = 2 * m * n * k
            for name in ops or OPS:
                spec, act = OPS[name]
                comp = torch.compile(_torch_fn(act)) if compiled else None
                times = measure(_ours_fn(spec), _torch_fn(act), (x, w, b), g, device,
                                reps=max(3, reps // 4), rounds=12, compiled=comp)
                for direction, (ms, tms, cms) in times.items():
                    rows.append(Row(family=FAMILY, op=name, shape=f"M={m},K={k},N={n}",
                                    dtype=dtype_name, direction=direction, device=device, ms=ms,
                                    torch_ms=tms, compiled_ms=cms,
                                    flops=FLOP_MULTIPLE[direction] * flops))
    return rows
