"""Python mirror of csrc/core/elementwise.h, used by the fake kernels so traced shapes and strides
match what the real kernels return."""

import torch


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """c10's compute_non_overlapping_and_dense: the strides, sorted, are those of a contiguous
    tensor whose dims are a permutation of t's (dims of size 1 ignored)."""
    if t.dim() == 1:
        return t.size(0) < 2 or t.stride(0) == 1
    required = 1
    for d in sorted(range(t.dim()), key=lambda d: t.stride(d)):
        if t.size(d) == 1:
            continue
        if t.stride(d) != required:
            return False
        required *= t.size(d)
    return True


def elementwise_output(*tensors: torch.Tensor) -> torch.Tensor:
    """An empty tensor laid out as the elementwise kernels lay out their output.

    Operands that are all non-overlapping and dense with equal strides are walked in place and the
    output copies their strides; otherwise the kernels work on contiguous copies.
    """
    first = tensors[0]
    dense = all(is_non_overlapping_and_dense(t) for t in tensors)
    if dense and all(t.stride() == first.stride() for t in tensors[1:]):
        return torch.empty_like(first)
    return torch.empty_like(first, memory_format=torch.contiguous_format)
