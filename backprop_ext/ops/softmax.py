"""The softmax family: softmax, log_softmax, logsumexp (cross-entropy is cross_entropy.py).

Reads top to bottom: fake kernels, autograd Functions (each with jvp, vmap and a differentiable
backward; their formulas are the ops' autograd and vmap, see autograd.py), the public functions
with torch.nn.functional's signatures.

Ops (csrc/ops/schemas.cpp):
    softmax_fwd(x, dim, log) -> y                 softmax_bwd(grad_y, y, dim, log) -> grad_x
    logsumexp_fwd(x, dim) -> r (keepdim)          logsumexp_bwd(grad_r, x, r, dim) -> grad_x
"""


from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence

import torch

from . import entry as _ops
from .autograd import batch_first, batched_dim, register, save_for_forward
from .dtypes import FLOAT_DTYPES
from .errors import raise_public

__all__ = ["softmax", "log_softmax", "logsumexp"]


# --- fake kernels


@torch.library.register_fake("backprop_ext::softmax_fwd")
def _softmax_fwd_fake(x, dim, log=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("backprop_ext::softmax_bwd")
def _softmax_bwd_fake(grad_output, output, dim, log=False):
    return torch.empty_like(output, memory_format=torch.contiguous_format)


@torch.library.register_fake("backprop_ext::logsumexp_fwd")
def _logsumexp_fwd_fake(x, dim):
    shape = list(x.shape)
    if shape:
        shape[dim] = 1
    return x.new_empty(shape)


@torch.library.register_fake("backprop_ext::logsumexp_bwd")
def _logsumexp_bwd_fake(grad, x, result, dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# --- softmax / log_softmax


class SoftmaxFunction(torch.autograd.Function):
    """y = softmax(x) or log_softmax(x) along dim. Saves y only."""

    @staticmethod
    def forward(x, dim, log=False):
        return _ops.softmax_fwd(x, dim, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.dim, ctx.log = inputs
        ctx.save_for_backward(output)
        save_for_forward(ctx, output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return _ops.softmax_bwd(grad, y, ctx.dim, ctx.log), None, None

    @staticmethod
    def jvp(ctx, x_t, *_):
        (y,) = ctx.saved_tensors
        if ctx.log:  # d log_softmax = dx - sum(softmax * dx)
            return x_t - (y.exp() * x_t).sum(ctx.dim, keepdim=True)
        return _ops.softmax_bwd(x_t, y, ctx.dim, False)  # y (dx - sum(y dx))

    @staticmethod
    def vmap(info, in_dims, x, dim, log=False):
        x = x.movedim(in_dims[0], 0)
        if x.dim() == 1:  # per-sample 0-d: one row of one element each
            return _ops.softmax_fwd(x.unsqueeze(1), 1, log).squeeze(1), 0
        return _ops.softmax_fwd(x, batched_dim(dim, x.dim() - 1), log), 0


class SoftmaxBackwardFunction(torch.autograd.Function):
    """softmax: gx = y (g - sum(g y));  log_softmax: gx = g - exp(y) sum(g)."""

    @staticmethod
    def forward(g, y, dim, log=False):
        return _ops.softmax_bwd(g, y, dim, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, y, ctx.dim, ctx.log = inputs
        ctx.save_for_backward(g, y)
        save_for_forward(ctx, g, y)

    @staticmethod
    def backward(ctx, gg):
        g, y = ctx.saved_tensors
        dim, d_g, d_y = ctx.dim, None, None
        if ctx.log:
            e = y.exp()
            if ctx.needs_input_grad[0]:
                d_g = gg - (gg * e).sum(dim, keepdim=True)
            if ctx.needs_input_grad[1]:
                d_y = -gg * e * g.sum(dim, keepdim=True)
        else:
            if ctx.needs_input_grad[0]:
                d_g = _ops.softmax_bwd(gg, y, dim, False)
            if ctx.needs_input_grad[1]:
                s = (g * y).sum(dim, keepdim=True)
                d_y = gg * (g - s) - g * (gg * y).sum(dim, keepdim=True)
        return d_g, d_y, None, None

    @staticmethod
    def jvp(ctx, g_t, y_t, *_):
        g, y = ctx.saved_tensors
        dim = ctx.dim
        g_t = torch.zeros_like(g) if g_t is None else g_t
        y_t = torch.zeros_like(y) if y_t is None else y_t
        if ctx.log:
            e = y.exp()
            return g_t - e * y_t * g.sum(dim, keepdim=True) - e * g_t.sum(dim, keepdim=True)
        s = (g * y).sum(dim, keepdim=True)
        s_t = (g_t * y + g * y_t).sum(dim, keepdim=True)
        return y_t * (g - s) + y * (g_t - s_t)

    @staticmethod
    def vmap(info, in_dims, g, y, dim, log=False):
        g, y = (batch_first(t, d, info.batch_size) for t, d in zip((g, y), in_dims))
        if y.dim() == 1:
            return _ops.softmax_bwd(g.unsqueeze(1), y.unsqueeze(1), 1, log).squeeze(1), 0
        return _ops.softmax_bwd(g, y, batched_dim(dim, y.dim() - 1), log), 0


# --- logsumexp


class LogsumexpFunction(torch.autograd.Function):
    """r = log(sum(exp(x))) along one dim, kept as size 1. Saves x and r."""

    @staticmethod
    def forward(x, dim):
        return _ops.logsumexp_fwd(x, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.dim = inputs
        ctx.save_for_backward(x, output)
        save_for_forward(ctx, x, output)

    @staticmethod
    def backward(ctx, grad):
        x, r = ctx.saved_tensors
        return _ops.logsumexp_bwd(grad, x, r, ctx.dim), None

    @staticmethod
    def jvp(ctx, x_t, *_):
        x, r = ctx.saved_tensors
        return (x_t * torch.exp(x - r)).sum(ctx.dim, keepdim=True)

    @staticmethod
    def vmap(info, in_dims, x, dim):
        x = x.movedim(in_dims[0], 0)
        if x.dim() == 1:
            return _ops.logsumexp_fwd(x.unsqueeze(1), 1).squeeze(1), 0
        return _ops.logsumexp_fwd(x, batched_dim(dim, x.dim() - 1)), 0


class LogsumexpBackwardFunction(torch.autograd.Function):
    """gx = g exp(x - r)."""

    @staticmethod
    def forward(g, x, r, dim):
        return _ops.logsumexp_bwd(g, x, r, dim)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, x, r, ctx.dim = inputs
        ctx.save_for_backward(g, x, r)
        save_for_forward(ctx, g, x, r)

    @staticmethod
    def backward(ctx, gg):
        g, x, r = ctx.saved_tensors
        p = torch.exp(x - r)
        ggp = gg * g * p
        d_g = (gg * p).sum(ctx.dim, keepdim=True) if ctx.needs_input_grad[0] else None
        d_x = ggp if ctx.needs_input_grad[1] else None
        d_r = -ggp.sum(ctx.dim, keepdim=True) if ctx.needs_input_grad[2] else None
        return d_g, d_x, d_r, None

    @staticmethod
    def jvp(ctx, g_t, x_t, r_t, *_):
        g, x, r = ctx.saved_tensors
        p = torch.exp(x - r)
        out = torch.zeros_like(x) if g_t is None else g_t * p
        if x_t is not None:
            out = out + g * p * x_t
        if r_t is not None:
            out = out - g * p * r_t
        return out

    @staticmethod
    def vmap(info, in_dims, g, x, r, dim):
        g, x, r = (batch_first(t, d, info.batch_size) for t, d in zip((g, x, r), in_dims))
        if x.dim() == 1:
            gx = _ops.logsumexp_bwd(g.unsqueeze(1), x.unsqueeze(1), r.unsqueeze(1), 1)
            return gx.squeeze(1), 0
        return _ops.logsumexp_bwd(g, x, r, batched_dim(dim, x.dim() - 1)), 0


register("softmax_fwd", SoftmaxFunction)
register("softmax_bwd", SoftmaxBackwardFunction)
register("logsumexp_fwd", LogsumexpFunction)
register("logsumexp_bwd", LogsumexpBackwardFunction)


# --- public functions


def _dim_int(op: str, dim) -> int:
    """dim as an int: an int, or anything with __index__ but a bool, as torch takes it."""
    try:
        if isinstance(dim, bool):
            raise TypeError
        return operator.index(dim)
    except TypeError:
        raise TypeError(f"backprop_ext.{op}: dim must be an int, got {type(dim).__name__} "
                        f"{dim!r}") from None


def _cast(op: str, input, dtype):
    """input.to(dtype) for softmax's `dtype` argument, refusing what is not a float dtype."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"backprop_ext.{op}: dtype must be a torch.dtype or None, got "
                        f"{type(dtype).__name__} {dtype!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"backprop_ext.{op}: dtype must be float64, float32, float16 or "
                        f"bfloat16, got {dtype}")
    return input.to(dtype)


def _implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
        "dim=X as an argument.", stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


_SOFTMAX_ARGS = (("input", "Tensor", "self"), ("dim", "int?", None), ("_stacklevel", "any", None),
                 ("dtype", "dtype?", None))


def _softmax(name: str, input, dim, stacklevel: int, dtype) -> torch.Tensor:
    """softmax or log_softmax (by `name`): the dim and dtype arguments as torch takes them."""
    if type(dim) is not int:
        dim = (_implicit_dim(name, input.dim(), stacklevel) if dim is None
               else _dim_int(name, dim))
    if dtype is not None:
        input = _cast(name, input, dtype)
    return _ops.softmax_fwd(input, dim, name == "log_softmax")


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, max-subtracted. Same as torch.nn.functional.softmax.

    input: any shape, float64/float32/float16/bfloat16 (cast to `dtype` first when given).
    """
    try:
        if type(dim) is int and dtype is None:  # the common call: no Python call more
            return _ops.softmax_fwd(input, dim, False)
        return _softmax("softmax", input, dim, _stacklevel + 1, dtype)
    except Exception as error:
        raise_public(error, "softmax", _SOFTMAX_ARGS, (input, dim, _stacklevel, dtype))
        raise


_LOG_SOFTMAX_ARGS = _SOFTMAX_ARGS


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """x - logsumexp(x) along `dim`. Same as torch.nn.functional.log_softmax."""
    try:
        if type(dim) is int and dtype is None:  # the common call: no Python call more
            return _ops.softmax_fwd(input, dim, True)
        return _softmax("log_softmax", input, dim, _stacklevel + 1, dtype)
    except Exception as error:
        raise_public(error, "log_softmax", _LOG_SOFTMAX_ARGS, (input, dim, _stacklevel, dtype))
        raise


_LOGSUMEXP_ARGS = (("input", "Tensor", "self"), ("dim", "dims", None), ("keepdim", "bool", None))


def logsumexp(input: torch.Tensor, dim: int | Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """log(sum(exp(input))) over `dim` (an int or a tuple of ints; empty: every dim), computed
    stably. Same as torch.logsumexp. input: float64/float32/float16/bfloat16, any shape."""
    try:
        ndim = input.dim()
        if type(dim) is int and -ndim <= dim < ndim:  # the common case, checked
            out = _ops.logsumexp_fwd(input, dim)
            return out if keepdim else out.squeeze(dim)
        try:
            dims = [_dim_int("logsumexp", d)
                    for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
        except TypeError:
            raise TypeError("backprop_ext.logsumexp: dim must be an int or a tuple of ints, got "
                            f"{type(dim).__name__} {dim!r}") from None
        size = max(ndim, 1)  # a 0-d tensor has the one dim 0 (or -1)
        wrapped = []
        for d in dims:
            if not -size <= d < size:
                raise IndexError(
                    f"backprop_ext.logsumexp: dim {d} is out of range for a tensor of {ndim} "
                    f"dimensions (shape {tuple(input.shape)})")
            if d % size in wrapped:  # torch's exception type and words
                raise RuntimeError(f"backprop_ext.logsumexp: dim {d % size} appears multiple times "
                                   "in the list of dims")
            wrapped.append(d % size)
        if ndim == 0:
            return _ops.logsumexp_fwd(input, 0)
        wrapped = wrapped or list(range(ndim))
        if len(wrapped) == 1:
            out = _ops.logsumexp_fwd(input, wrapped[0])
            return out if keepdim else out.squeeze(wrapped[0])
        # Several dims: move them to the end, flatten them into one, reduce that. The flattened size
        # is given, not -1: with an empty dim among the kept ones -1 would be ambiguous.
        kept = [d for d in range(ndim) if d not in wrapped]
        moved = input.permute(kept + sorted(wrapped))
        flat = moved.reshape([input.shape[d] for d in kept]
                             + [math.prod(input.shape[d] for d in wrapped)])
        out = _ops.logsumexp_fwd(flat, -1).squeeze(-1)
        if keepdim:
            out = out.reshape([1 if d in wrapped else input.shape[d] for d in range(ndim)])
        return out
    except Exception as error:
        raise_public(error, "logsumexp", _LOGSUMEXP_ARGS, (input, dim, keepdim))
        raise

