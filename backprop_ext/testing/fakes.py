"""Fake devices for checks that need no kernel: CUDA autocast's dtypes without a GPU."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def fake_cuda_autocast(dtype: torch.dtype = torch.float16):
    """CUDA autocast on fake tensors, on any machine: tensors made inside on device "cuda" are fake
    (devices, dtypes and shapes only; no kernel runs, and no backward, which needs the device), and
    CUDA autocast is on with `dtype`, as `torch.autocast("cuda")` would set it on a GPU. So the
    dtypes CUDA autocast gives can be checked without a GPU. Restores autocast's state on exit."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    with FakeTensorMode():
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", dtype)
        try:
            yield
        finally:
            torch.set_autocast_enabled("cuda", enabled)
            torch.set_autocast_dtype("cuda", previous)
