"""What every family's Python side shares: the dtypes the kernels take, the input check of the
public functions, whether this build has CUDA kernels."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in (and return per-row results in) for `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_float_input(op: str, input) -> None:
    """TypeError unless `input` is a float64/float32/float16/bfloat16 Tensor, naming `op`."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"backprop_ext.{op}: expected input to be a Tensor, got "
                        f"{type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"backprop_ext.{op}: expected input of dtype float64, float32, float16 or "
                        f"bfloat16, got {input.dtype}")


# Whether this build has the CUDA kernels: a constant, read once (cheap to consult while tracing).
CUDA_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("backprop_ext::activation_fwd", "CUDA")
