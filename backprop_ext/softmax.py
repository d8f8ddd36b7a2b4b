"""The softmax family: softmax, log_softmax, logsumexp and a fused cross-entropy.

Reads top to bottom: fake kernels, autograd Functions (each with jvp and a differentiable
backward), the public functions with torch.nn.functional's signatures.

Ops (csrc/registration.cpp):
    softmax_fwd(x, dim, log) -> y                 softmax_bwd(grad_y, y, dim, log) -> grad_x
    logsumexp_fwd(x, dim) -> r (keepdim)          logsumexp_bwd(grad_r, x, r, dim) -> grad_x
    cross_entropy_fwd(logits (N, C), target (N,), weight, ignore_index, smoothing)
        -> nll (N,), smooth (N,) or (0,), lse (N,)          [opmath dtype]
    cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index) -> grad
    cross_entropy_bwd_out(..., out)               the same into `out`: a slice of a larger
                                                  gradient, or the logits themselves

Cross-entropy never materializes log-probabilities: the forward reads the logits once for each
row's log-sum-exp and the target's logit; the backward reads them once more and writes the
gradient, p - onehot, in the same pass. Reductions, class weights and label smoothing are cheap
per-row arithmetic done with torch ops on (N,)-sized tensors, so every reduction and a per-element
grad_output for reduction='none' come for free from autograd.
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Sequence

import torch

from ._autograd import pick, save_for_forward, twin
from ._common import FLOAT_DTYPES, HALF_DTYPES, check_float_input, opmath_dtype

__all__ = ["softmax", "log_softmax", "logsumexp", "cross_entropy"]

_ops = torch.ops.backprop_ext


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


@torch.library.register_fake("backprop_ext::cross_entropy_fwd")
def _cross_entropy_fwd_fake(logits, target, weight, ignore_index, smoothing):
    n = logits.shape[0]
    dtype = opmath_dtype(logits.dtype)
    return (logits.new_empty(n, dtype=dtype), logits.new_empty(n if smoothing else 0, dtype=dtype),
            logits.new_empty(n, dtype=dtype))


@torch.library.register_fake("backprop_ext::cross_entropy_bwd")
def _cross_entropy_bwd_fake(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("backprop_ext::cross_entropy_bwd_out")
def _cross_entropy_bwd_out_fake(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index,
                                out):
    torch._check(out.shape == logits.shape, lambda: "cross_entropy_bwd: expected logits and out "
                 f"to have the same shape, but got {tuple(logits.shape)} and {tuple(out.shape)}")


# --- softmax / log_softmax


class SoftmaxFunction(torch.autograd.Function):
    """y = softmax(x) or log_softmax(x) along dim. Saves y only."""

    @staticmethod
    def forward(x, dim, log):
        return _ops.softmax_fwd(x, dim, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, ctx.dim, ctx.log = inputs
        ctx.save_for_backward(output)
        save_for_forward(ctx, output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return pick(_SOFTMAX_BWD).apply(grad, y, ctx.dim, ctx.log), None, None

    @staticmethod
    def jvp(ctx, x_t, *_):
        (y,) = ctx.saved_tensors
        if ctx.log:  # d log_softmax = dx - sum(softmax * dx)
            return x_t - (y.exp() * x_t).sum(ctx.dim, keepdim=True)
        return _ops.softmax_bwd(x_t, y, ctx.dim, False)  # y (dx - sum(y dx))


class SoftmaxBackwardFunction(torch.autograd.Function):
    """softmax: gx = y (g - sum(g y));  log_softmax: gx = g - exp(y) sum(g)."""

    @staticmethod
    def forward(g, y, dim, log):
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
                d_g = pick(_SOFTMAX_BWD).apply(gg, y, dim, False)
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
        return pick(_LOGSUMEXP_BWD).apply(grad, x, r, ctx.dim), None

    @staticmethod
    def jvp(ctx, x_t, *_):
        x, r = ctx.saved_tensors
        return (x_t * torch.exp(x - r)).sum(ctx.dim, keepdim=True)


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


# --- cross-entropy over rows, class-index targets


def _row_probs(logits, lse):
    return torch.exp(logits.to(lse.dtype) - lse.unsqueeze(1))


def _total_weight(weight, C, dtype):
    return weight.to(dtype).sum() if weight is not None else torch.tensor(float(C), dtype=dtype)


class CrossEntropyFunction(torch.autograd.Function):
    """(nll, smooth) per row: lse - x[t] and sum_c w_c (lse - x_c); zero for ignored rows.
    Saves the logits (the input itself: no extra memory) and the per-row lse."""

    @staticmethod
    def forward(logits, target, weight, ignore_index, smoothing):
        nll, smooth, lse = _ops.cross_entropy_fwd(logits, target, weight, ignore_index, smoothing)
        return nll, smooth, lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, ctx.ignore_index, ctx.smoothing = inputs
        lse = output[2]
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(logits, target, weight, lse)
        save_for_forward(ctx, logits, target, weight, lse)

    @staticmethod
    def backward(ctx, grad_nll, grad_smooth, _grad_lse):
        logits, target, weight, lse = ctx.saved_tensors
        grad = pick(_CROSS_ENTROPY_BWD).apply(
            logits, target, weight, lse, grad_nll, grad_smooth if ctx.smoothing else None,
            ctx.ignore_index,
        )
        return grad, None, None, None, None

    @staticmethod
    def jvp(ctx, logits_t, *_):
        logits, target, weight, lse = ctx.saved_tensors
        keep = (target != ctx.ignore_index).to(lse.dtype)
        x_t = logits_t.to(lse.dtype)
        p_dot = (_row_probs(logits, lse) * x_t).sum(1)
        t_dot = x_t.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
        nll_t = (p_dot - t_dot) * keep
        if ctx.smoothing:
            w = weight.to(lse.dtype) if weight is not None else torch.ones_like(x_t[0])
            W = _total_weight(weight, logits.shape[1], lse.dtype)
            smooth_t = (W * p_dot - (x_t * w).sum(1)) * keep
        else:
            smooth_t = torch.zeros(0, dtype=lse.dtype, device=lse.device)
        return nll_t, smooth_t, None  # lse is non-differentiable


class CrossEntropyBackwardFunction(torch.autograd.Function):
    """grad = a (p - onehot(t)) + b (p W - w) per row (a = grad_nll, b = grad_smooth)."""

    @staticmethod
    def forward(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index):
        return _ops.cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth,
                                      ignore_index)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, lse, grad_nll, grad_smooth, ctx.ignore_index = inputs
        ctx.has_smooth = grad_smooth is not None
        ctx.save_for_backward(logits, target, weight, lse, grad_nll, grad_smooth)

    @staticmethod
    def backward(ctx, gg):
        logits, target, weight, lse, a, b = ctx.saved_tensors
        dtype, C = lse.dtype, logits.shape[1]
        keep = (target != ctx.ignore_index).to(dtype)
        p = _row_probs(logits, lse)
        gg = gg.to(dtype)
        gp = (gg * p).sum(1)
        t = target.clamp(0, C - 1).unsqueeze(1)
        W = _total_weight(weight, C, dtype)
        d_a = ((gp - gg.gather(1, t).squeeze(1)) * keep) if ctx.needs_input_grad[4] else None
        d_b = None
        if ctx.has_smooth and ctx.needs_input_grad[5]:
            w = weight.to(dtype) if weight is not None else torch.ones(C, dtype=dtype,
                                                                           device=gg.device)
            d_b = (W * gp - (gg * w).sum(1)) * keep
        d_x = None
        if ctx.needs_input_grad[0]:
            k = a if not ctx.has_smooth else a + b * W
            d_x = ((k * keep).unsqueeze(1) * p * (gg - gp.unsqueeze(1))).to(logits.dtype)
        return d_x, None, None, None, d_a, d_b, None


_SOFTMAX = twin(SoftmaxFunction)
_SOFTMAX_BWD = twin(SoftmaxBackwardFunction)
_LOGSUMEXP = twin(LogsumexpFunction)
_LOGSUMEXP_BWD = twin(LogsumexpBackwardFunction)
_CROSS_ENTROPY = twin(CrossEntropyFunction)
_CROSS_ENTROPY_BWD = (CrossEntropyBackwardFunction, CrossEntropyBackwardFunction)  # has no jvp


# --- public functions


def _autocast_float32(x: torch.Tensor, devices: Sequence[str]) -> torch.Tensor:
    """Casts half inputs to float32 where torch's autocast would for this op family."""
    dev = x.device.type
    if dev in devices and x.dtype in HALF_DTYPES and torch.is_autocast_enabled(dev):
        return x.float()
    return x


def _dim_int(op: str, dim) -> int:
    """dim as an int: an int, or anything with __index__ but a bool, as torch takes it."""
    try:
        if isinstance(dim, bool):
            raise TypeError
        return operator.index(dim)
    except TypeError:
        raise TypeError(f"backprop_ext.{op}: dim must be an int, got {type(dim).__name__} "
                        f"{dim!r}") from None


def _softmax_common(op, input, dim, dtype, log, stacklevel):
    check_float_input(op, input)
    if dim is None:
        dim = _implicit_dim(op, input.dim(), stacklevel + 1)
    dim = _dim_int(op, dim)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"backprop_ext.{op}: dtype must be a torch.dtype or None, got "
                            f"{type(dtype).__name__} {dtype!r}")
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"backprop_ext.{op}: dtype must be float64, float32, float16 or "
                            f"bfloat16, got {dtype}")
        input = input.to(dtype)
    input = _autocast_float32(input, ("cuda",))
    return pick(_SOFTMAX).apply(input, dim, log)


def _implicit_dim(name: str, ndim: int, stacklevel: int) -> int:
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
        "dim=X as an argument.", stacklevel=stacklevel,
    )
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, max-subtracted. Same as torch.nn.functional.softmax.

    input: any shape, float64/float32/float16/bfloat16 (cast to `dtype` first when given).
    """
    return _softmax_common("softmax", input, dim, dtype, False, _stacklevel)


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """x - logsumexp(x) along `dim`. Same as torch.nn.functional.log_softmax."""
    return _softmax_common("log_softmax", input, dim, dtype, True, _stacklevel)


def logsumexp(input: torch.Tensor, dim: int | Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """log(sum(exp(input))) over `dim` (an int or a tuple of ints; empty: every dim), computed
    stably. Same as torch.logsumexp. input: float64/float32/float16/bfloat16, any shape."""
    check_float_input("logsumexp", input)
    input = _autocast_float32(input, ("cuda",))
    ndim = input.dim()
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
        return pick(_LOGSUMEXP).apply(input, 0)
    wrapped = wrapped or list(range(ndim))
    if len(wrapped) == 1:
        out = pick(_LOGSUMEXP).apply(input, wrapped[0])
        return out if keepdim else out.squeeze(wrapped[0])
    # Several dims: move them to the end, flatten them into one, reduce that. The flattened size
    # is given, not -1: with an empty dim among the kept ones -1 would be ambiguous.
    kept = [d for d in range(ndim) if d not in wrapped]
    moved = input.permute(kept + sorted(wrapped))
    flat = moved.reshape([input.shape[d] for d in kept]
                         + [math.prod(input.shape[d] for d in wrapped)])
    out = pick(_LOGSUMEXP).apply(flat, -1).squeeze(-1)
    if keepdim:
        out = out.reshape([1 if d in wrapped else input.shape[d] for d in range(ndim)])
    return out


_REDUCTIONS = ("none", "mean", "sum")


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  size_average=None, ignore_index: int = -100, reduce=None,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy between logits and targets. Same as torch.nn.functional.cross_entropy.

    input: (C), (N, C) or (N, C, d1, ...) logits, float64/float32/float16/bfloat16.
    target: class indices (int64) of shape (), (N) or (N, d1, ...), each in [0, C) or equal to
    ignore_index; or class probabilities of input's shape (then ignore_index must be negative).
    weight: (C,), in input's dtype for class indices (any floating dtype for probabilities).
    Returns the loss, a scalar or target's shape for reduction='none': in input's dtype for class
    indices; for probabilities in the promotion of input's, target's and weight's, as torch.
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    check_float_input("cross_entropy", input)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"backprop_ext.cross_entropy: reduction must be one of {_REDUCTIONS}, "
                         f"got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("backprop_ext.cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    if input.dim() == 0:
        raise ValueError("backprop_ext.cross_entropy: expected input of shape (C), (N, C) or "
                         "(N, C, d1, ...), got a 0-d tensor")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"backprop_ext.cross_entropy: expected target to be a Tensor, got "
                        f"{type(target).__name__}")
    if target.device != input.device:
        raise ValueError(f"backprop_ext.cross_entropy: expected target on {input.device} like "
                         f"input, got {target.device}")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError("backprop_ext.cross_entropy: expected weight to be a Tensor or None, got "
                        f"{type(weight).__name__}")
    # torch runs cross-entropy in float32 under autocast: half inputs, weights and targets.
    input = _autocast_float32(input, ("cpu", "cuda"))
    class_dim = 0 if input.dim() == 1 else 1
    C = input.shape[class_dim]
    if weight is not None:
        if weight.shape != (C,):
            raise ValueError(f"backprop_ext.cross_entropy: expected weight of shape ({C},) (one "
                             f"per class), got {tuple(weight.shape)}")
        if weight.device != input.device:
            raise ValueError(f"backprop_ext.cross_entropy: expected weight on {input.device} "
                             f"like input, got {weight.device}")
        weight = _autocast_float32(weight, ("cpu", "cuda"))
    if target.is_floating_point():
        if ignore_index >= 0:  # torch's exception type
            raise RuntimeError("backprop_ext.cross_entropy: ignore_index is not supported for "
                               f"class-probability targets, got ignore_index={ignore_index}")
        target = _autocast_float32(target, ("cpu", "cuda"))
        return _cross_entropy_probs(input, target, weight, class_dim, C, reduction,
                                    label_smoothing)
    if target.dtype != torch.int64:
        raise TypeError("backprop_ext.cross_entropy: expected target of dtype int64 (class "
                        f"indices) or a floating dtype (class probabilities), got {target.dtype}")
    if weight is not None and weight.dtype != input.dtype:  # torch's exception type
        raise RuntimeError(f"backprop_ext.cross_entropy: expected weight of input's dtype "
                           f"{input.dtype}, got {weight.dtype}")
    loss = _cross_entropy_indices(input, target, weight, class_dim, C, ignore_index, reduction,
                                  label_smoothing)
    return loss.to(input.dtype)


def _no_class_losses(logits, rows_target, ignore_index):
    """(nll, smooth) for logits of shape (N, 0), where the op has no class to read: every target
    must be ignore_index (as torch requires), and then both are 0, still joined to logits so
    that backward gives their (empty) gradient."""
    if rows_target.numel():
        bad = rows_target != ignore_index
        if bad.is_cuda:  # checked on the device, like the op's targets: no host sync
            torch._assert_async(~bad.any(), "backprop_ext.cross_entropy: target is out of "
                                "bounds: input has no classes")
        elif bad.any():
            t = rows_target[bad][0].item()
            raise IndexError(f"backprop_ext.cross_entropy: target {t} is out of bounds: input "
                             "has no classes")
    zero = logits.to(opmath_dtype(logits.dtype)).sum(1)
    return zero, zero


def _cross_entropy_indices(input, target, weight, class_dim, C, ignore_index, reduction, eps):
    expected = input.shape[:class_dim] + input.shape[class_dim + 1:]
    if target.shape != expected:
        raise ValueError(
            f"backprop_ext.cross_entropy: expected class-index target of shape {tuple(expected)} "
            f"for input of shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    # The row count is given, not -1: it would be ambiguous for C = 0.
    logits = input.movedim(class_dim, -1).reshape(target.numel(), C)
    rows_target = target.reshape(-1)
    if C == 0:
        nll, smooth = _no_class_losses(logits, rows_target, ignore_index)
    else:
        nll, smooth, _ = pick(_CROSS_ENTROPY).apply(logits, rows_target, weight, ignore_index,
                                                    eps > 0)
    keep = rows_target != ignore_index
    if weight is None or C == 0:
        w_t = keep.to(nll.dtype)
    else:
        w_t = weight.to(nll.dtype).gather(0, rows_target.clamp(0, C - 1)) * keep
    loss = w_t * nll
    # torch's eps / C: inf for C = 0, so that 0 * inf gives torch's NaN.
    smooth_scale = eps / C if C else math.inf
    if reduction == "none":
        if eps > 0:
            loss = (1 - eps) * loss + smooth_scale * smooth
        return loss.reshape(target.shape)
    if reduction == "sum":
        loss = loss.sum()
        return (1 - eps) * loss + smooth_scale * smooth.sum() if eps > 0 else loss
    # Both terms over the total weight of the counted targets, as torch: 0 / 0 = NaN when it is 0
    # (a smoothing term over that zero would otherwise make it inf).
    total = w_t.sum()
    loss = loss.sum() / total
    return (1 - eps) * loss + smooth_scale * (smooth.sum() / total) if eps > 0 else loss


def _cross_entropy_probs(input, target, weight, class_dim, C, reduction, eps):
    if target.shape != input.shape:
        raise ValueError(
            f"backprop_ext.cross_entropy: expected class-probability target of input's shape "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if eps > 0:
        target = target * (1 - eps) + (eps / C if C else math.inf)
    logp = pick(_SOFTMAX).apply(input, class_dim, True)
    prod = logp * target  # promotes, as torch does, to target's dtype (and weight's) if wider
    if weight is not None:
        shape = [1] * input.dim()
        shape[class_dim] = C
        prod = prod * weight.view(shape)
    loss = -prod.sum(class_dim)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if input.numel() == 0:  # torch's NaN, also when rows remain (C = 0)
        return loss.sum() * math.nan
    return loss.mean()
