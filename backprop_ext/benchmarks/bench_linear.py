"""Linear family: act(x W^T + b) forward, backward (the backward op alone) and fwd+bwd (through
autograd), ours vs torch's F.linear + F.<act> on the same tensors.

TFLOP/s count the matrix products only: 2 M N K forward, 4 M N K backward, 6 M N K for both.
`sizes` (from the command line) are square problems, M = K = N = size.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as TF

from .. import functional as BF
from ..linear import parse_activation
from .common import Row, time_ms, time_pair

FAMILY = "linear"
DEFAULT_SHAPES = {"cpu": [(1024, 1024, 1024)], "cuda": [(8192, 4096, 16384)]}  # (M, K, N)
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["bfloat16"]}

aten = torch.ops.aten

# name -> (our activation argument, torch's activation, torch's backward of it from (g, z, y))
OPS = {
    "linear": (None, None, None),
    "linear_gelu": ("gelu", TF.gelu, lambda g, z, y: aten.gelu_backward(g, z)),
    "linear_gelu_tanh": ("gelu_tanh", lambda z: TF.gelu(z, approximate="tanh"),
                         lambda g, z, y: aten.gelu_backward(g, z, approximate="tanh")),
    "linear_relu": ("relu", TF.relu, lambda g, z, y: aten.threshold_backward(g, y, 0)),
    "linear_silu": ("silu", TF.silu, lambda g, z, y: aten.silu_backward(g, z)),
}


def _ours_fn(spec):
    return lambda x, w, b: BF.linear(x, w, b, activation=spec)


def _torch_fn(act):
    if act is None:
        return TF.linear
    return lambda x, w, b: act(TF.linear(x, w, b))


def _torch_backward(act_bwd, g, x, w, z, y):
    """What autograd runs for F.linear + F.<act>: the activation's backward, then the linear's."""
    gz = g if act_bwd is None else act_bwd(g, z, y)
    return gz @ w, gz.t() @ x, gz.sum(0)


def _fwd_bwd(fn, leaves, g):
    def step():
        for t in leaves:
            t.grad = None
        fn(*leaves).backward(g)
    return step


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    # The GEMMs dominate and the two sides differ by a few percent at most: many short rounds
    # (rather than a few long ones), each side going first in every other one, keep a load that
    # comes and goes, or the order, from favouring one side.
    def pair(ours, theirs):
        a, b = [], []
        for r in range(12):
            if r % 2 == 0:
                ms, tms = time_pair(ours, theirs, device, reps=max(3, reps // 4), rounds=1)
            else:
                tms, ms = time_pair(theirs, ours, device, reps=max(3, reps // 4), rounds=1)
            a.append(ms)
            b.append(tms)
        return statistics.median(a), statistics.median(b)

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
            for name in ops or OPS:
                spec, act, act_bwd = OPS[name]
                op_name, p0, p1 = parse_activation(spec)
                ours_fn, torch_fn = _ours_fn(spec), _torch_fn(act)
                comp_fn = torch.compile(torch_fn) if compiled else None
                common = dict(family=FAMILY, op=name, shape=f"M={m},K={k},N={n}",
                              dtype=dtype_name, device=device)
                flops = 2 * m * n * k

                with torch.no_grad():
                    ms, tms = pair(lambda: ours_fn(x, w, b), lambda: torch_fn(x, w, b))
                    cms = time_ms(lambda: comp_fn(x, w, b), device, reps) if compiled else None
                rows.append(Row(direction="fwd", ms=ms, torch_ms=tms, compiled_ms=cms,
                                flops=flops, **common))

                # The backward alone: what each side's forward left for it.
                z = TF.linear(x, w, b)
                y = z if act is None else act(z)
                _, preact = torch.ops.backprop_ext.linear_fwd(x, w, b, op_name, p0, p1, True)
                saved = preact if preact.numel() else y
                ms, tms = pair(
                    lambda: torch.ops.backprop_ext.linear_bwd(g, x, w, saved, op_name, p0, p1,
                                                              [True, True, True]),
                    lambda: _torch_backward(act_bwd, g, x, w, z, y))
                rows.append(Row(direction="bwd", ms=ms, torch_ms=tms, flops=2 * flops, **common))
                del z, y, preact, saved

                leaves = [t.detach().requires_grad_() for t in (x, w, b)]
                ms, tms = pair(_fwd_bwd(ours_fn, leaves, g), _fwd_bwd(torch_fn, leaves, g))
                cms = time_ms(_fwd_bwd(comp_fn, leaves, g), device, reps) if compiled else None
                rows.append(Row(direction="fwd+bwd", ms=ms, torch_ms=tms, compiled_ms=cms,
                                flops=3 * flops, **common))
    return rows
