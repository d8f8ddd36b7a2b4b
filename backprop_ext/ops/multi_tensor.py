"""The multi-tensor family: norms, scaling and clamping of many tensors in one call, the kernels
under backprop_ext.utils' gradient clipping and gradient-flow report.

Ops (csrc/ops/schemas.cpp; math in csrc/math/multi_tensor_math.h). Each takes a list of tensors on
one device (the device of tensors[0]), float64/float32/float16/bfloat16 mixed freely, of any
shapes and layouts:
    multi_tensor_norm(tensors, p) -> 0-d tensor        ||all tensors as one vector||_p
    multi_tensor_norm_per_tensor(tensors, p) -> [n]    ||tensors[i]||_p for each i
    multi_tensor_scale_(tensors, total_norm, max_norm) in place:
                                              x *= min(1, max_norm / (total_norm + 1e-6))
    multi_tensor_clamp_(tensors, lo, hi)               in place: x = clamp(x, lo, hi)
p is any positive number or inf. Norms accumulate in float32 (float64 when any tensor is float64),
are returned in that dtype on the tensors' device, and are never read back to the host: the scale
op takes the norm as a device tensor and computes the coefficient on the device.

On CUDA, tensors are grouped by dtype and packed many to a launch (kernel-argument metadata), so
hundreds of tensors take a few launches; on CPU all their chunks are split across threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .dtypes import CUDA_BUILT, FLOAT_DTYPES

__all__ = ["norm_dtype", "FLOAT_DTYPES", "kernels_on", "kernels_take"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def kernels_on(device: torch.device) -> bool:
    """Whether the multi-tensor kernels run on `device`: CPU, CUDA when built, meta (the fake
    kernels)."""
    return device.type in ("cpu", "meta") or (device.type == "cuda" and CUDA_BUILT)


def kernels_take(t: torch.Tensor) -> bool:
    """Whether the kernels take `t` (on a device where kernels_on): a plain dense
    float64/32/16/bfloat16 tensor; not complex dtypes, sparse layouts or tensor subclasses.
    The one answer of clipping and the gradient-flow report; four attribute reads."""
    return type(t) in _PLAIN and t.dtype in FLOAT_DTYPES and t.layout == torch.strided


def norm_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype the norm ops return for `tensors`: float64 if any is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --- fake kernels (shapes, dtypes and devices for tracing, torch.compile and opcheck)


def _check_fake(op: str, tensors: Sequence[torch.Tensor]) -> None:
    torch._check(len(tensors) > 0, lambda: f"{op}: expected a non-empty list of tensors")
    device = tensors[0].device
    for i, t in enumerate(tensors):
        torch._check(t.device == device, lambda i=i, t=t: f"{op}: all tensors must be on one "
                     f"device, the device of tensors[0] ({device}), but tensors[{i}] is on "
                     f"{t.device}")
        torch._check(t.dtype in FLOAT_DTYPES, lambda i=i, t=t: f"{op}: expected tensors[{i}] to "
                     f"be a float64, float32, float16 or bfloat16 tensor, but got {t.dtype}")


@torch.library.register_fake("backprop_ext::multi_tensor_norm")
def _multi_tensor_norm_fake(tensors, p):
    _check_fake("multi_tensor_norm", tensors)
    return tensors[0].new_empty((), dtype=norm_dtype(tensors))


@torch.library.register_fake("backprop_ext::multi_tensor_norm_per_tensor")
def _multi_tensor_norm_per_tensor_fake(tensors, p):
    _check_fake("multi_tensor_norm_per_tensor", tensors)
    return tensors[0].new_empty((len(tensors),), dtype=norm_dtype(tensors))


@torch.library.register_fake("backprop_ext::multi_tensor_scale_")
def _multi_tensor_scale_fake(tensors, total_norm, max_norm):
    _check_fake("multi_tensor_scale_", tensors)


@torch.library.register_fake("backprop_ext::multi_tensor_clamp_")
def _multi_tensor_clamp_fake(tensors, lo, hi):
    _check_fake("multi_tensor_clamp_", tensors)
