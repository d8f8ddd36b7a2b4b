"""Activation family: forward, backward (the backward op alone) and fwd+bwd (through autograd),
ours vs torch's own ops on the same tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import functional as BF
from ..activation import SAVES_OUTPUT
from .common import Row, time_ms, time_pair

FAMILY = "activation"
DEFAULT_SIZES = {"cpu": [1 << 24], "cuda": [1 << 28]}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}

aten = torch.ops.aten

# name -> (our functional call, torch's functional call, torch's backward op, our op params)
OPS = {
    "relu": (BF.relu, TF.relu, lambda g, s: aten.threshold_backward(g, s, 0), (0.0, 0.0)),
    "leaky_relu": (BF.leaky_relu, TF.leaky_relu,
                   lambda g, s: aten.leaky_relu_backward(g, s, 0.01, False), (0.01, 0.0)),
    "gelu": (BF.gelu, TF.gelu, lambda g, s: aten.gelu_backward(g, s), (0.0, 0.0)),
    "gelu_tanh": (lambda x: BF.gelu(x, approximate="tanh"), lambda x: TF.gelu(x, approximate="tanh"),
                  lambda g, s: aten.gelu_backward(g, s, approximate="tanh"), (0.0, 0.0)),
    "silu": (BF.silu, TF.silu, lambda g, s: aten.silu_backward(g, s), (0.0, 0.0)),
    "sigmoid": (BF.sigmoid, torch.sigmoid, lambda g, s: aten.sigmoid_backward(g, s), (0.0, 0.0)),
    "tanh": (BF.tanh, torch.tanh, lambda g, s: aten.tanh_backward(g, s), (0.0, 0.0)),
    "softplus": (BF.softplus, TF.softplus,
                 lambda g, s: aten.softplus_backward(g, s, 1.0, 20.0), (1.0, 20.0)),
}


def _fwd_bwd(fn, x, g):
    def step():
        x.grad = None
        fn(x).backward(g)
    return step


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    rows = []
    for dtype_name in dtypes or DEFAULT_DTYPES[device.split(":")[0]]:
        dtype = getattr(torch, dtype_name)
        for n in sizes or DEFAULT_SIZES[device.split(":")[0]]:
            x = torch.randn(n, device=device, dtype=dtype)
            g = torch.randn_like(x)
            esize = x.element_size()
            for name in ops or OPS:
                ours_fn, torch_fn, torch_bwd, (p0, p1) = OPS[name]
                saved = torch_fn(x) if name in SAVES_OUTPUT else x
                comp_fn = torch.compile(torch_fn) if compiled else None
                common = dict(family=FAMILY, op=name, shape=f"({n},)", dtype=dtype_name,
                              device=device)

                with torch.no_grad():
                    ms, tms = time_pair(lambda: ours_fn(x), lambda: torch_fn(x), device, reps)
                    cms = time_ms(lambda: comp_fn(x), device, reps) if compiled else None
                rows.append(Row(direction="fwd", ms=ms, torch_ms=tms, compiled_ms=cms,
                                bytes=2 * n * esize, **common))

                op_name = "gelu_tanh" if name == "gelu_tanh" else name
                ms, tms = time_pair(
                    lambda: torch.ops.backprop_ext.activation_bwd(g, saved, op_name, p0, p1),
                    lambda: torch_bwd(g, saved), device, reps)
                rows.append(Row(direction="bwd", ms=ms, torch_ms=tms, bytes=3 * n * esize,
                                **common))

                xg = x.detach().requires_grad_()
                ms, tms = time_pair(_fwd_bwd(ours_fn, xg, g), _fwd_bwd(torch_fn, xg, g), device,
                                    reps)
                cms = time_ms(_fwd_bwd(comp_fn, xg, g), device, reps) if compiled else None
                rows.append(Row(direction="fwd+bwd", ms=ms, torch_ms=tms, compiled_ms=cms,
                                bytes=5 * n * esize, **common))
    return rows
