"""What every family's Python side shares: the dtypes the kernels take and compute in, whether
this build has CUDA kernels. (Argument checks are the ops' own, in C++.)"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in (and return per-row results in) for `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# Whether this build has the CUDA kernels: a constant, read once (cheap to consult while tracing).
CUDA_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("backprop_ext::activation_fwd", "CUDA")
