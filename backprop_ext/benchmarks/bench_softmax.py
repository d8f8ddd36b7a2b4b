"""Softmax family: softmax, log_softmax, logsumexp, cross-entropy over the last dim, ours vs
torch's on the same tensors, in the directions of common.measure.

Ideal traffic counted (in passes over the input): softmax fwd 2, bwd 3, fwd+bwd 5; logsumexp
fwd 1, bwd 2, fwd+bwd 3; cross-entropy fwd 1, bwd 2, fwd+bwd 3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import functional as BF
from .common import dtypes_for, measure, rows_from

FAMILY = "softmax"
SIZES_HELP = ("softmax: total element counts, as rows of the default row length (32000 or "
              "32768 on a GPU, 4096 on a CPU)")
DEFAULT_SHAPES = {
    "cpu": {"softmax": (4096, 4096), "log_softmax": (4096, 4096), "logsumexp": (4096, 4096),
            "cross_entropy": (8192, 32000)},
    "cuda": {"softmax": (8192, 32768), "log_softmax": (8192, 32768), "logsumexp": (8192, 32768),
             "cross_entropy": (8192, 65536)},
}
DEFAULT_DTYPES = {"cpu": ["float32"], "cuda": ["float32", "bfloat16"]}

# name -> (ours, torch's, passes fwd, bwd, fwd+bwd); each takes (x, target)
OPS = {
    "softmax": (lambda x, t: BF.softmax(x, -1), lambda x, t: TF.softmax(x, -1), (2, 3, 5)),
    "log_softmax": (lambda x, t: BF.log_softmax(x, -1), lambda x, t: TF.log_softmax(x, -1),
                    (2, 3, 5)),
    "logsumexp": (lambda x, t: BF.logsumexp(x, -1), lambda x, t: torch.logsumexp(x, -1),
                  (1, 2, 3)),
    "cross_entropy": (BF.cross_entropy, TF.cross_entropy, (1, 2, 3)),
}


def run(device: str, dtypes=None, sizes=None, ops=None, reps: int = 20, compiled: bool = False):
    kind = device.split(":")[0]
    rows = []
    for dtype_name, dtype in dtypes_for(device, dtypes, DEFAULT_DTYPES):
        for name in ops or OPS:
            ours_fn, torch_fn, passes = OPS[name]
            shape = DEFAULT_SHAPES[kind][name]
            if sizes:  # element counts: rows of the default row length
                shape = (max(1, sizes[0] // shape[1]), shape[1])
            x = torch.randn(shape, device=device, dtype=dtype)
            target = torch.randint(0, shape[1], (shape[0],), device=device)
            g = torch.randn_like(ours_fn(x, target))
            nbytes = x.numel() * x.element_size()
            comp = torch.compile(torch_fn) if compiled else None
            times = measure(ours_fn, torch_fn, (x, target), g, device, reps, compiled=comp)
            rows += rows_from(times, FAMILY, name, f"{shape}", dtype_name, device,
                              {d: p * nbytes for d, p in zip(times, passes)})
    return rows
