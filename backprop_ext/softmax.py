"""The softmax family: softmax, log_softmax, logsumexp and a fused cross-entropy.

Reads top to bottom: fake kernels, autograd Functions (each with jvp, vmap and a differentiable
backward; their formulas are the ops' autograd and vmap, see _autograd.py), the public functions
with torch.nn.functional's signatures.

Ops (csrc/registration.cpp):
    softmax_fwd(x, dim, log) -> y                 softmax_bwd(grad_y, y, dim, log) -> grad_x
    logsumexp_fwd(x, dim) -> r (keepdim)          logsumexp_bwd(grad_r, x, r, dim) -> grad_x
    cross_entropy_fwd(logits (N, C), target (N,), weight, ignore_index, smoothing)
        -> nll (N,), smooth (N,) or (0,), lse (N,)          [opmath dtype]
    cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index) -> grad
    cross_entropy_bwd_out(..., out)               the same into `out`: a slice of a larger
                                                  gradient, or the logits themselves
    cross_entropy_loss_fwd(logits, target, weight, ignore_index, label_smoothing, reduction)
        -> loss, lse, total                       the rows' loss reduced, in the kernels (see
                                                  CrossEntropyLossFunction); its backward is
                                                  cross_entropy_bwd's
    cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing) -> loss
                                                  the loss: composite (CompositeImplicitAutograd,
                                                  in C++) of the ops above

Cross-entropy never materializes log-probabilities: the forward reads the logits once for each
row's log-sum-exp and the target's logit; the backward reads them once more and writes the
gradient, p - onehot, in the same pass. Class weights, label smoothing and the reduction are
cheap per-row arithmetic, done by the forward op itself (one pass over N values after the N x C
one); backward turns the loss's gradient into the rows' with a few ops on (N,)-sized tensors.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence

import torch

from . import _ops
from ._autograd import batch_first, batched_dim, per_sample, register, save_for_forward
from ._common import FLOAT_DTYPES, opmath_dtype

__all__ = ["softmax", "log_softmax", "logsumexp", "cross_entropy"]


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


@torch.library.register_fake("backprop_ext::cross_entropy_loss_fwd")
def _cross_entropy_loss_fwd_fake(logits, target, weight, ignore_index, label_smoothing,
                                 reduction):
    n = logits.shape[0]
    dtype = opmath_dtype(logits.dtype)
    return (logits.new_empty((n,) if reduction == "none" else (), dtype=dtype),
            logits.new_empty(n, dtype=dtype), logits.new_empty((), dtype=dtype))


@torch.library.register_fake("backprop_ext::cross_entropy_bwd_out")
def _cross_entropy_bwd_out_fake(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index,
                                out):
    torch._check(out.shape == logits.shape, lambda: "cross_entropy_bwd: expected logits and out "
                 f"to have the same shape, but got {tuple(logits.shape)} and {tuple(out.shape)}")


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


# --- cross-entropy over rows, class-index targets


def _row_probs(logits, lse):
    return torch.exp(logits.to(lse.dtype) - lse.unsqueeze(1))


def _total_weight(weight, C, dtype):
    """sum_c w_c: a 0-d tensor, or the number C without class weights."""
    return weight.to(dtype).sum() if weight is not None else C


def _row_weights(target, weight, ignore_index, dtype):
    """w_i = weight[target_i] (1 without class weights), 0 where target_i is ignore_index; a
    bool tensor without class weights (type promotion makes it a number where it is used)."""
    keep = target != ignore_index
    if weight is None:
        return keep
    return weight.to(dtype)[target.clamp(0, weight.shape[0] - 1)] * keep


def _row_tangents(logits, target, weight, lse, logits_t, ignore_index, smoothing):
    """Tangents of the rows' (nll, smooth) along logits_t; smooth's is empty without smoothing."""
    keep = (target != ignore_index).to(lse.dtype)
    x_t = logits_t.to(lse.dtype)
    p_dot = (_row_probs(logits, lse) * x_t).sum(1)
    t_dot = x_t.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    nll_t = (p_dot - t_dot) * keep
    if not smoothing:
        return nll_t, torch.zeros(0, dtype=lse.dtype, device=lse.device)
    w = weight.to(lse.dtype) if weight is not None else torch.ones_like(x_t[0])
    W = _total_weight(weight, logits.shape[1], lse.dtype)
    return nll_t, (W * p_dot - (x_t * w).sum(1)) * keep


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
        grad = _ops.cross_entropy_bwd(logits, target, weight, lse, grad_nll,
                                      grad_smooth if ctx.smoothing else None, ctx.ignore_index)
        return grad, None, None, None, None

    @staticmethod
    def jvp(ctx, logits_t, *_):
        logits, target, weight, lse = ctx.saved_tensors
        nll_t, smooth_t = _row_tangents(logits, target, weight, lse, logits_t, ctx.ignore_index,
                                        ctx.smoothing)
        return nll_t, smooth_t, None  # lse is non-differentiable

    @staticmethod
    def vmap(info, in_dims, logits, target, weight, ignore_index, smoothing):
        if in_dims[2] is not None:  # a class weight per sample: no batching of the kernel fits
            return per_sample(info, in_dims, CrossEntropyFunction.forward, logits, target, weight,
                              ignore_index, smoothing)
        # The samples' rows are rows: (B, N, C) logits as (B N, C).
        B = info.batch_size
        x = batch_first(logits, in_dims[0], B)
        t = batch_first(target, in_dims[1], B)
        n, c = x.shape[1:]
        nll, smooth, lse = _ops.cross_entropy_fwd(x.reshape(B * n, c), t.reshape(B * n), weight,
                                                  ignore_index, smoothing)
        smooth_dim = 0 if smoothing else None
        return ((nll.view(B, n), smooth.view(B, n) if smoothing else smooth, lse.view(B, n)),
                (0, smooth_dim, 0))


class CrossEntropyLossFunction(torch.autograd.Function):
    """The loss over rows, reduced: loss_i = (1 - eps) w_i nll_i + (eps / C) smooth_i with w_i the
    target's class weight (0 for an ignored row); reduction "none" keeps the loss_i, "sum" adds
    them, "mean" divides the sum by total = sum_i w_i. Saves the logits, the targets, the
    per-row lse and total; backward hands the rows' gradients to cross_entropy_bwd."""

    @staticmethod
    def forward(logits, target, weight, ignore_index, label_smoothing, reduction):
        return _ops.cross_entropy_loss_fwd(logits, target, weight, ignore_index, label_smoothing,
                                           reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, ctx.ignore_index, ctx.eps, ctx.reduction = inputs
        _, lse, total = output
        ctx.mark_non_differentiable(lse, total)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, target, weight, lse, total)
        ctx.save_for_forward(logits, target, weight, lse, total)

    @staticmethod
    def backward(ctx, grad, _grad_lse, _grad_total):
        logits, target, weight, lse, total = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        # d loss / d nll_i = (1 - eps) w_i, d loss / d smooth_i = eps / C; mean divides by total.
        scale = grad / total if ctx.reduction == "mean" else grad
        w = _row_weights(target, weight, ctx.ignore_index, lse.dtype)
        grad_nll = w * (scale * (1 - ctx.eps) if ctx.eps else scale)
        grad_smooth = None
        if ctx.eps:
            grad_smooth = (scale * (ctx.eps / logits.shape[1])).expand(lse.shape)
        grad_logits = _ops.cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth,
                                             ctx.ignore_index)
        return grad_logits, None, None, None, None, None

    @staticmethod
    def jvp(ctx, logits_t, *_):
        logits, target, weight, lse, total = ctx.saved_tensors
        nll_t, smooth_t = _row_tangents(logits, target, weight, lse, logits_t, ctx.ignore_index,
                                        ctx.eps > 0)
        rows_t = _row_weights(target, weight, ctx.ignore_index, lse.dtype) * nll_t
        if ctx.eps:
            rows_t = (1 - ctx.eps) * rows_t + (ctx.eps / logits.shape[1]) * smooth_t
        if ctx.reduction == "none":
            return rows_t, None, None
        loss_t = rows_t.sum()
        return (loss_t / total if ctx.reduction == "mean" else loss_t), None, None

    @staticmethod
    def vmap(info, in_dims, logits, target, weight, ignore_index, label_smoothing, reduction):
        if in_dims[2] is not None:  # a class weight per sample
            return per_sample(info, in_dims, CrossEntropyLossFunction.forward, logits, target,
                              weight, ignore_index, label_smoothing, reduction)
        # The samples' rows are rows: the loss of each row, then each sample's reduction.
        B = info.batch_size
        x = batch_first(logits, in_dims[0], B)
        t = batch_first(target, in_dims[1], B)
        n, c = x.shape[1:]
        rows, lse, _ = _ops.cross_entropy_loss_fwd(x.reshape(B * n, c), t.reshape(B * n), weight,
                                                   ignore_index, label_smoothing, "none")
        rows, lse = rows.view(B, n), lse.view(B, n)
        total = _row_weights(t, weight, ignore_index, rows.dtype).sum(1, dtype=rows.dtype)
        if reduction == "none":
            loss = rows
        else:
            loss = rows.sum(1) if reduction == "sum" else rows.sum(1) / total
        return (loss, lse, total), (0, 0, 0)


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

    @staticmethod
    def vmap(info, in_dims, logits, target, weight, lse, grad_nll, grad_smooth, ignore_index):
        if in_dims[2] is not None:
            return per_sample(info, in_dims, CrossEntropyBackwardFunction.forward, logits, target,
                              weight, lse, grad_nll, grad_smooth, ignore_index)
        B = info.batch_size
        x = batch_first(logits, in_dims[0], B)
        n, c = x.shape[1:]

        def rows(t, d):
            return None if t is None else batch_first(t, d, B).reshape(B * n)

        grad = _ops.cross_entropy_bwd(
            x.reshape(B * n, c), rows(target, in_dims[1]), weight, rows(lse, in_dims[3]),
            rows(grad_nll, in_dims[4]), rows(grad_smooth, in_dims[5]), ignore_index)
        return grad.view(B, n, c), 0


register("softmax_fwd", SoftmaxFunction)
register("softmax_bwd", SoftmaxBackwardFunction)
register("logsumexp_fwd", LogsumexpFunction)
register("logsumexp_bwd", LogsumexpBackwardFunction)
register("cross_entropy_fwd", CrossEntropyFunction)
register("cross_entropy_bwd", CrossEntropyBackwardFunction)
register("cross_entropy_loss_fwd", CrossEntropyLossFunction)


def _cross_entropy_bwd_out_vmap(info, in_dims, logits, target, weight, lse, grad_nll,
                                grad_smooth, ignore_index, out):
    """cross_entropy_bwd_out under vmap: the batched backward, written into the batched `out`.
    (An out= op has no autograd, as torch's out= ops have none.)"""
    if in_dims[7] is None:
        raise RuntimeError("backprop_ext::cross_entropy_bwd_out under vmap: out must be batched "
                           "too (it receives one gradient per sample)")
    grad, _ = CrossEntropyBackwardFunction.vmap(
        info, in_dims[:7], logits, target, weight, lse, grad_nll, grad_smooth, ignore_index)
    out.movedim(in_dims[7], 0).copy_(grad)
    return None, None


torch.library.register_vmap("backprop_ext::cross_entropy_bwd_out", _cross_entropy_bwd_out_vmap)


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


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """exp(x) / sum(exp(x)) along `dim`, max-subtracted. Same as torch.nn.functional.softmax.

    input: any shape, float64/float32/float16/bfloat16 (cast to `dtype` first when given).
    """
    if type(dim) is not int:
        dim = (_implicit_dim("softmax", input.dim(), _stacklevel) if dim is None
               else _dim_int("softmax", dim))
    if dtype is not None:
        input = _cast("softmax", input, dtype)
    return _ops.softmax_fwd(input, dim, False)


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """x - logsumexp(x) along `dim`. Same as torch.nn.functional.log_softmax."""
    if type(dim) is not int:
        dim = (_implicit_dim("log_softmax", input.dim(), _stacklevel) if dim is None
               else _dim_int("log_softmax", dim))
    if dtype is not None:
        input = _cast("log_softmax", input, dtype)
    return _ops.softmax_fwd(input, dim, True)


def logsumexp(input: torch.Tensor, dim: int | Sequence[int], keepdim: bool = False) -> torch.Tensor:
    """log(sum(exp(input))) over `dim` (an int or a tuple of ints; empty: every dim), computed
    stably. Same as torch.logsumexp. input: float64/float32/float16/bfloat16, any shape."""
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
    One call of the composite op cross_entropy (csrc/softmax.cpp), which checks the arguments.
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    return _ops.cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing)
