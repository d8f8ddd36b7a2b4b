"""Cross-entropy: torch.nn.functional.cross_entropy on fused kernels that never materialize
log-probabilities.

Reads top to bottom: fake kernels, autograd Functions (each with jvp, vmap and a differentiable
backward; their formulas are the ops' autograd and vmap, see autograd.py), the public function.

Ops (csrc/ops/schemas.cpp):
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
                                                  in C++) of the ops above and softmax_fwd

The forward reads the logits once for each row's log-sum-exp and the target's logit; the
backward reads them once more and writes the gradient, p - onehot, in the same pass. Class
weights, label smoothing and the reduction are cheap per-row arithmetic, done by the forward op
itself (one pass over N values after the N x C one); backward turns the loss's gradient into the
rows' with a few ops on (N,)-sized tensors.
"""

from __future__ import annotations

import torch

from . import entry as _ops
from .autograd import batch_first, per_sample, register, save_for_forward
from .dtypes import opmath_dtype
from .errors import raise_public

__all__ = ["cross_entropy"]


# --- fake kernels

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
        save_for_forward(ctx, logits, target, weight, lse, total)

    @staticmethod
    def backward(ctx, grad, _grad_lse, _grad_total):
        logits, target, weight, lse, total = ctx.saved_tensors
        if grad is None:
            return None, None, None, None, None, None
        # d loss / d nll_i = (1 - eps) w_i, d loss / d smooth_i = eps / C; mean divides by total.
        scale = grad / total if ctx.reduction == "mean" else grad
        row = scale * (1 - ctx.eps) if ctx.eps else scale
        if weight is None:
            # w_i is 1 but on ignored rows, which cross_entropy_bwd zeroes whatever their
            # grad_nll: the same gradient without the two elementwise ops building w.
            grad_nll = row.expand(lse.shape)
        else:
            grad_nll = _row_weights(target, weight, ctx.ignore_index, lse.dtype) * row
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


_CROSS_ENTROPY_ARGS = (
    ("input", "Tensor", None), ("target", "Tensor", None), ("weight", "Tensor?", None),
    ("size_average", "any", None), ("ignore_index", "int", None), ("reduce", "any", None),
    ("reduction", "reduction", None), ("label_smoothing", "float", None))


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
    One call of the composite op cross_entropy (csrc/ops/cross_entropy.cpp), which checks the
    arguments.
    """
    try:
        if size_average is not None or reduce is not None:
            reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
        return _ops.cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing)
    except Exception as error:
        raise_public(error, "cross_entropy", _CROSS_ENTROPY_ARGS, (
            input, target, weight, size_average, ignore_index, reduce, reduction,
            label_smoothing))
        raise

