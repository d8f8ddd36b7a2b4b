"""linear_cross_entropy: a language-model head and its cross-entropy, without the logits.

    loss = cross_entropy(input @ linear_weight.T + linear_bias, target, weight, ignore_index,
                         label_smoothing, reduction)

torch 2.14's F.linear_cross_entropy signature (`weight` is the class weight, called class_weight
below and in the Function).

For N rows of H features and V classes the logits are N x V: at N = 8192, V = 128256 they are
2 GiB in bfloat16, and torch's unfused path holds about three such tensors at its peak (logits,
log-probabilities, their gradients). Here the rows are taken in blocks of `chunk_size`
(options.batch_chunk_size); one (chunk, V) buffer is reused for every block, so the extra memory
is O(chunk x V), never O(N x V):

    for each block of rows:
        z  = x_blk @ W.T + b                 into the buffer (torch's GEMM)
        nll, smooth, lse = cross_entropy_fwd(z, ...)          per row, in float32 or better
        dz = cross_entropy_bwd_out(z, ..., out=z)             in place, over z
        grad_x[blk] = dz @ W;  grad_W += dz.T @ x_blk;  grad_b += sum_rows dz

The per-row arithmetic (class weights, label smoothing, reduction) is in one place, _row_terms:
    l_i = (1 - eps) w_i nll_i + (eps / V) smooth_i,     w_i = class_weight[t_i] (0 if ignored)
    nll_i = lse_i - z_i[t_i],   smooth_i = sum_c class_weight_c (lse_i - z_ic)
    loss = l (none), sum_i l_i (sum), sum_i l_i / sum_i w_i (mean),
exactly torch.nn.functional.cross_entropy's definition.

When is the gradient computed? For reduction "mean" and "sum" the gradient of the loss is known
up to one scalar (the loss's own gradient, usually 1), so the forward computes it in the same pass
over the blocks (three GEMMs in all, as many as the unfused path) and the backward only scales
it, in place. For reduction "none" the gradient of each row's loss is known only in backward: the
forward keeps the per-row log-sum-exp and the backward recomputes each block's logits (one GEMM
more). A backward with create_graph=True (double backward) runs a composite of torch ops instead,
which autograd can differentiate again; it materializes each block's probabilities and the graph
keeps them, so it is for small problems and tests.

Precision. Half-precision logits are reduced in float32 (the kernels' opmath), as torch's autocast
path does when it upcasts the logits for cross-entropy. The weight gradient is a sum over blocks;
it accumulates in its own dtype, one rounding per block: for bfloat16/float16 weights that is
ceil(N / chunk) roundings where torch's single GEMM has one. Under torch.autocast with float32
(master) weights, the cast's backward receives the half-precision gradient just as it does
after torch's F.linear.

Ops used (csrc/ops/schemas.cpp): cross_entropy_fwd, cross_entropy_bwd_out (the softmax family).
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as TF

from .autograd import pick, save_for_forward, saved_tensors_hooked, twin
from .dtypes import FLOAT_DTYPES, HALF_DTYPES, opmath_dtype

__all__ = ["linear_cross_entropy", "default_chunk_size", "LinearCrossEntropyOptions"]

_ops = torch.ops.backprop_ext
_REDUCTIONS = ("none", "mean", "sum")
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)  # autocast leaves float64 be


if hasattr(torch.nn, "LinearCrossEntropyOptions"):  # torch >= 2.14
    LinearCrossEntropyOptions = torch.nn.LinearCrossEntropyOptions
else:

    @dataclasses.dataclass(slots=True, frozen=True)
    class LinearCrossEntropyOptions:
        """torch 2.14's torch.nn.LinearCrossEntropyOptions, for torch 2.11-2.13 (which lack it):
        the same fields and defaults. Only batch_chunk_size changes what linear_cross_entropy
        does (rows per block; None: default_chunk_size()); see linear_cross_entropy."""

        allow_retain_graph: bool = False
        batch_chunk_size: int | None = None
        chunking_method: str | None = "auto"
        acc_policy: str = "auto"
        acc_dtype: torch.dtype | None = None

        def __post_init__(self):
            if not (self.batch_chunk_size is None or (
                    isinstance(self.batch_chunk_size, int) and self.batch_chunk_size > 0)):
                raise ValueError("batch_chunk_size must be positive int or None, got "
                                 f"{self.batch_chunk_size!r}")


# Bytes of the (chunk, V) logits block that chunk_size=None aims for, per device. The block is
# the only O(chunk x V) scratch; a larger one makes longer GEMMs and fewer read-modify-writes of
# the (V, H) weight gradient (one per block). CPU (the chunk sweep of
# benchmarks/bench_linear_cross_entropy.py, 2048 x 1024 x 32000 float32, two runs): 64-row
# blocks take 1.4x the unfused path's time, 128-row 1.15x, 256-row 1.04x, 512 rows and more the
# same within the noise; at H = 256 (a transformers head of 1020 or 4096 rows, 32000 classes,
# seven alternating calls) 256-row blocks take the time of 384-row ones. 32 MiB (256 rows of
# 32000 float32 classes) is also the largest block glibc's malloc serves from its heap (its
# dynamic mmap threshold stops at 32 MiB): a larger one is mapped afresh on every call and pays
# a page fault per 4 KiB it writes. CUDA: not measured yet. 512 MiB is 2048 rows of a
# 128256-word bfloat16 vocabulary, the weight-gradient GEMM's K: large enough that reading and
# writing its (V, H) accumulator (1 GiB each way in bfloat16 at H = 4096) stays small beside its
# 2 V H K FLOPs, small enough to be under a tenth of torch's ~3 N V temporaries at N = 8192.
_BLOCK_BYTES = {"cpu": 32 << 20, "cuda": 512 << 20}


def default_chunk_size(n_rows: int, n_classes: int, dtype: torch.dtype, device_type: str) -> int:
    """Rows per block when chunk_size is None: a block of logits of at most about
    _BLOCK_BYTES[device] (32 MiB on CPU, 512 MiB on CUDA), in whole multiples of 64 rows (of 8
    below 64 rows), at least 8 rows, at most n_rows."""
    budget = _BLOCK_BYTES.get(device_type, _BLOCK_BYTES["cpu"])
    rows = budget // max(1, n_classes * dtype.itemsize)
    rows = rows // 64 * 64 if rows >= 64 else max(8, rows // 8 * 8)
    return max(1, min(rows, n_rows))


# --- the per-row arithmetic: class weights, label smoothing, reduction


def _row_terms(target, class_weight, ignore_index, eps, n_classes, reduction, dtype):
    """(a, b, scale) with l_i = a_i nll_i + b smooth_i, loss_i = l_i for "none" and
    loss = scale * sum_i l_i otherwise: a_i = (1 - eps) w_i, b = eps / V, scale = 1 / sum_i w_i
    for "mean" (None for "sum"), w_i row i's class weight (0 where ignored). Tensors in `dtype`
    (the opmath dtype), on target's device."""
    keep = target != ignore_index
    if class_weight is None:
        w = keep.to(dtype)
    else:
        w = class_weight.to(dtype).gather(0, target.clamp(0, n_classes - 1)) * keep
    a = (1.0 - eps) * w
    b = eps / n_classes
    scale = 1.0 / w.sum() if reduction == "mean" else None
    return a, b, scale


def _reduce(nll, smooth, a, b, scale, reduction):
    loss = a * nll
    if smooth is not None:
        loss = loss + b * smooth
    if reduction == "none":
        return loss
    loss = loss.sum()
    return loss * scale if scale is not None else loss


def _grad_coefficients(a, b, scale, grad_loss, smoothing):
    """(grad_nll, grad_smooth) per row, the cross_entropy_bwd(_out) arguments, for the loss's
    gradient grad_loss (a 0-d tensor for "mean"/"sum", (N,) for "none")."""
    g = grad_loss.to(a.dtype)
    if scale is not None:
        g = g * scale
    grad_nll = a * g
    grad_smooth = (b * g).expand_as(a).contiguous() if smoothing else None
    return grad_nll, grad_smooth


# --- the sweep over row blocks (all kernel work happens here)


def _block_logits(buf, x, weight, bias, begin, end):
    """z = x[begin:end] @ weight.T + bias, written into the front rows of buf."""
    z = buf[: end - begin]
    if bias is None:
        torch.mm(x[begin:end], weight.t(), out=z)
    else:
        torch.addmm(bias, x[begin:end], weight.t(), out=z)
    return z


def _sweep(x, weight, bias, target, class_weight, ignore_index, smoothing, chunk, lse, coef,
           fold):
    """One pass over the logits, block by block, through one reused (chunk, V) buffer.

    lse None: the forward op runs on each block and (nll, smooth, lse) come back, (N,) each.
    coef = (grad_nll, grad_smooth): each block's gradient dz is written over its logits (the
    forward's lse, or the given one) and handed to fold(begin, end, dz).
    """
    n, v = x.shape[0], weight.shape[0]
    stats = None
    if lse is None:
        dtype = opmath_dtype(x.dtype)
        stats = (x.new_empty(n, dtype=dtype), x.new_empty(n if smoothing else 0, dtype=dtype),
                 x.new_empty(n, dtype=dtype))
    buf = x.new_empty(min(chunk, n), v)
    for begin in range(0, n, chunk):
        end = min(begin + chunk, n)
        z = _block_logits(buf, x, weight, bias, begin, end)
        t = target[begin:end]
        if stats is not None:
            try:
                nll, smooth, block_lse = _ops.cross_entropy_fwd(z, t, class_weight, ignore_index,
                                                                smoothing)
            except IndexError as e:  # a bad target: the kernel counts positions in the block
                raise IndexError(f"backprop_ext.linear_cross_entropy: in rows [{begin}, {end}) "
                                 f"of the input: {e}") from None
            stats[0][begin:end] = nll
            stats[2][begin:end] = block_lse
            if smoothing:
                stats[1][begin:end] = smooth
        else:
            block_lse = lse[begin:end]
        if coef is not None:
            grad_nll, grad_smooth = coef
            _ops.cross_entropy_bwd_out(
                z, t, class_weight, block_lse, grad_nll[begin:end],
                grad_smooth[begin:end] if grad_smooth is not None else None, ignore_index, z)
            fold(begin, end, z)
    return stats


def _grad_folder(x, weight, bias, needs):
    """(grads, fold): gradient tensors for the inputs in `needs` (input, weight, bias), and the
    fold that adds a block's dz to them: its rows of grad_input, dz.T @ x_blk into grad_weight
    (the first block writes, the rest accumulate), dz's column sums into grad_bias (float32
    or better)."""
    gi = torch.empty_like(x) if needs[0] else None
    gw = torch.empty_like(weight) if needs[1] else None
    gb = torch.zeros(weight.shape[0], dtype=opmath_dtype(x.dtype), device=x.device) \
        if needs[2] and bias is not None else None
    if gw is not None and x.shape[0] == 0:
        gw.zero_()

    def fold(begin, end, dz):
        if gi is not None:
            torch.mm(dz, weight, out=gi[begin:end])
        if gw is not None:
            if begin == 0:
                torch.mm(dz.t(), x[begin:end], out=gw)
            else:
                gw.addmm_(dz.t(), x[begin:end])
        if gb is not None:
            gb.add_(dz.sum(0, dtype=gb.dtype))

    return [gi, gw, gb], fold


# --- the same gradient as torch ops, for a backward that autograd differentiates again


def _composite_grads(x, weight, bias, target, class_weight, ignore_index, grad_nll, grad_smooth,
                     chunk, needs):
    """(grad_input, grad_weight, grad_bias) from differentiable torch ops, block by block:
    dz = grad_nll (p - onehot(t)) + grad_smooth (p W - w), p = softmax(z), W = sum_c w_c."""
    n, v = x.shape[0], weight.shape[0]
    dtype = grad_nll.dtype
    cw = class_weight.to(dtype) if class_weight is not None else None
    total = cw.sum() if cw is not None else float(v)
    gis, gw, gb = [], None, None
    for begin in range(0, n, chunk):
        end = min(begin + chunk, n)
        x_blk, t = x[begin:end], target[begin:end]
        keep = (t != ignore_index).to(dtype).unsqueeze(1)
        p = torch.softmax(TF.linear(x_blk, weight, bias).to(dtype), dim=1)
        a = grad_nll[begin:end].unsqueeze(1)
        onehot = TF.one_hot(t.clamp(0, v - 1), v).to(dtype)
        dz = a * (p - onehot)
        if grad_smooth is not None:
            b = grad_smooth[begin:end].unsqueeze(1)
            dz = dz + b * (p * total - (cw if cw is not None else 1.0))
        dz = (dz * keep).to(x.dtype)
        if needs[0]:
            gis.append(dz @ weight)
        if needs[1]:
            gw = dz.t() @ x_blk if gw is None else gw + dz.t() @ x_blk
        if needs[2] and bias is not None:
            gb = dz.sum(0) if gb is None else gb + dz.sum(0)
    gi = (torch.cat(gis) if gis else torch.zeros_like(x)) if needs[0] else None
    if needs[1] and gw is None:
        gw = torch.zeros_like(weight)
    if needs[2] and bias is not None and gb is None:
        gb = torch.zeros_like(bias)
    return gi, gw, gb


# --- autograd


class LinearCrossEntropyFunction(torch.autograd.Function):
    """(loss, lse, *precomputed gradients) for 2-d input (N, H), weight (V, H), target (N,).

    `precompute` (input, weight, bias): the gradients the forward computes for a backward that
    then only scales them ("mean"/"sum"); all False for "none", when nothing needs a gradient and
    under saved-tensor hooks.
    Saved: input, weight, bias, target, class_weight (the caller holds them anyway) and the
    per-row lse; the precomputed gradients are held by ctx until the first backward consumes
    them (a second backward through a retained graph recomputes).
    """

    @staticmethod
    def forward(input, weight, bias, target, class_weight, ignore_index, label_smoothing,
                reduction, chunk_size, precompute):
        x, w = input.contiguous(), weight.contiguous()
        n_classes = w.shape[0]
        smoothing = label_smoothing > 0
        dtype = opmath_dtype(x.dtype)
        a, b, scale = _row_terms(target, class_weight, ignore_index, label_smoothing, n_classes,
                                 reduction, dtype)
        grads, fold, coef = [None, None, None], None, None
        if any(precompute):
            grads, fold = _grad_folder(x, w, bias, precompute)
            coef = _grad_coefficients(a, b, scale, torch.ones((), dtype=dtype, device=x.device),
                                      smoothing)
        with torch.autocast(x.device.type, enabled=False):
            nll, smooth, lse = _sweep(x, w, bias, target, class_weight, ignore_index, smoothing,
                                      chunk_size, None, coef, fold)
        loss = _reduce(nll, smooth if smoothing else None, a, b, scale, reduction)
        if grads[2] is not None:
            grads[2] = grads[2].to(bias.dtype)
        # Gradients not computed are empty tensors, each its own (outputs never alias).
        return (loss, lse, *(g if g is not None else x.new_empty(0) for g in grads))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (input, weight, bias, target, class_weight, ctx.ignore_index, ctx.label_smoothing,
         ctx.reduction, ctx.chunk_size, precompute) = inputs
        _, lse, *grads = output
        ctx.mark_non_differentiable(lse, *grads)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(input, weight, bias, target, class_weight, lse)
        save_for_forward(ctx, input, weight, bias, target, class_weight, lse)
        ctx.precomputed = grads if any(precompute) else None
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_loss, *_):
        input, weight, bias, target, class_weight, lse = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 ctx.needs_input_grad[2] and ctx.has_bias)
        none = (None,) * 7
        if grad_loss is None:
            return (None, None, None) + none
        precomputed, ctx.precomputed = ctx.precomputed, None
        if precomputed is not None and not torch.is_grad_enabled():
            # The forward's gradients, for a loss gradient of 1: scale them in place (no copy of
            # the (V, H) weight gradient), and hand them over.
            grads = [g.mul_(grad_loss.to(g.dtype)) if need else None
                     for g, need in zip(precomputed, needs)]
            return (*grads, *none)
        x, w = input.contiguous(), weight.contiguous()
        smoothing = ctx.label_smoothing > 0
        a, b, scale = _row_terms(target, class_weight, ctx.ignore_index, ctx.label_smoothing,
                                 w.shape[0], ctx.reduction, lse.dtype)
        coef = _grad_coefficients(a, b, scale, grad_loss, smoothing)
        with torch.autocast(x.device.type, enabled=False):
            if torch.is_grad_enabled():  # create_graph: a backward autograd can differentiate
                grads = _composite_grads(x, w, bias, target, class_weight, ctx.ignore_index,
                                         *coef, ctx.chunk_size, needs)
                return (*grads, *none)
            grads, fold = _grad_folder(x, w, bias, needs)
            _sweep(x, w, bias, target, class_weight, ctx.ignore_index, smoothing, ctx.chunk_size,
                   lse, coef, fold)
        if grads[2] is not None:
            grads[2] = grads[2].to(bias.dtype)
        return (*grads, *none)

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        # d loss = sum_i <dl_i/dz_i, dz_i>, dz_i = x_t,i W^T + x_i W_t^T + b_t: per block, the
        # unit-gradient dz (bwd op, in place) dotted with the block's logits' tangent.
        input, weight, bias, target, class_weight, lse = ctx.saved_tensors
        x, w = input.contiguous(), weight.contiguous()
        n = x.shape[0]
        smoothing = ctx.label_smoothing > 0
        a, b, scale = _row_terms(target, class_weight, ctx.ignore_index, ctx.label_smoothing,
                                 w.shape[0], ctx.reduction, lse.dtype)
        ones = torch.ones(n if ctx.reduction == "none" else (), dtype=lse.dtype, device=x.device)
        coef = _grad_coefficients(a, b, scale, ones, smoothing)
        dots = lse.new_zeros(n)

        def fold(begin, end, dz):
            terms = [input_t[begin:end] @ w.t() if input_t is not None else None,
                     x[begin:end] @ weight_t.t() if weight_t is not None else None, bias_t]
            dz = dz.to(lse.dtype)
            for term in terms:
                if term is not None:
                    dots[begin:end] += (dz * term.to(lse.dtype)).sum(1)

        with torch.autocast(x.device.type, enabled=False):
            _sweep(x, w, bias, target, class_weight, ctx.ignore_index, smoothing, ctx.chunk_size,
                   lse, coef, fold)
        loss_t = dots if ctx.reduction == "none" else dots.sum()
        return (loss_t, None, None, None, None)


_LINEAR_CROSS_ENTROPY = twin(LinearCrossEntropyFunction)


# --- public function


def _check(cond: bool, message: str, exc=RuntimeError) -> None:
    """Raises exc with the public name. The kinds are torch's for the same mistake: a wrong type
    is a TypeError, a wrong shape, dtype, device or value a RuntimeError, except a batch-size
    mismatch between input and target and an unknown reduction (ValueError)."""
    if not cond:
        raise exc(f"backprop_ext.linear_cross_entropy: {message}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_args(input, linear_weight, target, linear_bias, weight, reduction, label_smoothing,
                chunk_size):
    for name, t in (("input", input), ("linear_weight", linear_weight), ("target", target)):
        _check(isinstance(t, torch.Tensor), f"expected {name} to be a Tensor, got "
               f"{type(t).__name__}", TypeError)
    for name, t in (("linear_bias", linear_bias), ("weight", weight)):
        _check(t is None or isinstance(t, torch.Tensor), f"expected {name} to be a Tensor or "
               f"None, got {type(t).__name__}", TypeError)
    _check(_is_real(label_smoothing), "expected label_smoothing to be a float, got "
           f"{type(label_smoothing).__name__}", TypeError)
    _check(input.dtype in FLOAT_DTYPES, "expected input of dtype float64, float32, float16 or "
           f"bfloat16, got {input.dtype}")
    _check(input.dim() >= 1, "expected input of shape (*, in_features), got a 0-d tensor")
    _check(linear_weight.dim() == 2, "expected linear_weight of shape (num_classes, "
           f"in_features), got shape {tuple(linear_weight.shape)}")
    _check(input.shape[-1] == linear_weight.shape[1], "expected input.shape[-1] == "
           f"linear_weight.shape[1] (in_features), got input of shape {tuple(input.shape)} and "
           f"linear_weight of shape {tuple(linear_weight.shape)}")
    _check(linear_weight.shape[0] > 0, "expected at least one class (linear_weight.shape[0] > 0)")
    if linear_bias is not None:
        _check(linear_bias.shape == linear_weight.shape[:1], "expected linear_bias of shape "
               f"({linear_weight.shape[0]},), got {tuple(linear_bias.shape)}")
    _check(target.dtype == torch.int64, "expected class-index target of dtype int64 (or "
           f"class probabilities of shape {(*input.shape[:-1], linear_weight.shape[0])}), got "
           f"{target.dtype}")
    batch_mismatch = (target.dim() == input.dim() - 1 >= 1
                      and target.shape[0] != input.shape[0])
    _check(target.shape == input.shape[:-1], f"expected target of shape "
           f"{tuple(input.shape[:-1])} (input's without in_features), got {tuple(target.shape)}",
           ValueError if batch_mismatch else RuntimeError)
    if weight is not None:
        _check(weight.shape == linear_weight.shape[:1], f"expected weight of shape "
               f"({linear_weight.shape[0]},) (one per class), got {tuple(weight.shape)}")
        _check(weight.is_floating_point(), "expected a floating-point weight (class weight), got "
               f"{weight.dtype}")
    for name, t in (("linear_weight", linear_weight), ("target", target),
                    ("linear_bias", linear_bias), ("weight", weight)):
        _check(t is None or t.device == input.device, f"expected {name} on {input.device} like "
               f"input, got {t.device if t is not None else None}")
    _check(reduction in _REDUCTIONS, f"reduction must be one of {_REDUCTIONS}, got {reduction!r}",
           ValueError)
    _check(0.0 <= label_smoothing <= 1.0, f"label_smoothing must be in [0, 1], got "
           f"{label_smoothing}")
    _check(chunk_size is None or (isinstance(chunk_size, int) and chunk_size > 0),
           f"options.batch_chunk_size must be a positive int or None, got {chunk_size!r}",
           ValueError)


def _autocast(input, weight, bias):
    """Under torch.autocast, the casts torch's F.linear gets (to the device's autocast dtype)."""
    device_type = input.device.type
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return input, weight, bias, False
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t is not None and t.dtype in _AUTOCAST_ELIGIBLE else t

    return cast(input), cast(weight), cast(bias), True


# The spelling of backprop_ext 0.x before torch 2.14 had the function, and what to write now.
_OLD_KEYWORDS = {
    "bias": "linear_bias=",
    "class_weight": "weight= (the class weight, as in torch's F.linear_cross_entropy)",
    "chunk_size": "options=LinearCrossEntropyOptions(batch_chunk_size=...)",
}


def _reject_old_spelling(positional: tuple, keywords: dict) -> None:
    if positional:
        raise TypeError(
            "backprop_ext.linear_cross_entropy: takes 3 positional arguments (input, "
            f"linear_weight, target) but {3 + len(positional)} were given; the bias is now the "
            "keyword linear_bias= (torch's signature): write linear_cross_entropy(input, "
            "linear_weight, target, linear_bias=bias)")
    for name in keywords:
        if name in _OLD_KEYWORDS:
            raise TypeError(f"backprop_ext.linear_cross_entropy: {name}= is no longer an "
                            f"argument (torch's signature now); write {_OLD_KEYWORDS[name]}")
        raise TypeError(f"backprop_ext.linear_cross_entropy: got an unexpected keyword argument "
                        f"{name!r}")


def _chunk_of(options) -> int | None:
    """options.batch_chunk_size (None: our default block), for torch's LinearCrossEntropyOptions
    or any object with that field."""
    if options is None:
        return None
    if not hasattr(options, "batch_chunk_size"):
        raise TypeError("backprop_ext.linear_cross_entropy: expected options to be a "
                        "LinearCrossEntropyOptions (or None), got "
                        f"{type(options).__name__}")
    return options.batch_chunk_size


def _reference(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
               label_smoothing):
    """torch's reference F.cross_entropy(F.linear(...)), classes last: for class-probability
    targets and K-dimensional weights, which run unfused (the logits are materialized)."""
    if linear_weight.dim() > 2:  # K-dimensional loss: logits (N, C, d_1, ..., d_K), as torch's
        shape = (*input.shape[:-1], *linear_weight.shape[:-1])
        logits = TF.linear(input, linear_weight.reshape(-1, input.shape[-1]),
                           linear_bias.reshape(-1) if linear_bias is not None else None)
        return TF.cross_entropy(logits.reshape(shape), target, weight=weight,
                                reduction=reduction, ignore_index=ignore_index,
                                label_smoothing=label_smoothing)
    logits = TF.linear(input, linear_weight, linear_bias)
    n_classes = linear_weight.shape[0]
    loss = TF.cross_entropy(logits.reshape(-1, n_classes), target.reshape(-1, n_classes),
                            weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    return loss.reshape(target.shape[:-1]) if reduction == "none" else loss


def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor,
                         *_positional, linear_bias: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, reduction: str = "mean",
                         ignore_index: int | None = None, label_smoothing: float = 0.0,
                         options=None, **_keywords) -> torch.Tensor:
    """torch.nn.functional.linear_cross_entropy (torch 2.14's signature and meaning), without
    materializing the logits, forward and backward, with O(chunk x num_classes) extra memory.
    The same result as torch's reference

        F.cross_entropy(F.linear(input, linear_weight, linear_bias).reshape(-1, num_classes),
                        target.reshape(-1), weight=weight, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, reduction=reduction)

    (reshaped to target's shape for reduction="none"): the classes are the logits' last dim, as
    F.linear makes them, whatever the leading dims (torch's takes 1-d or 2-d input only; ours
    any (*, in_features)).

    input: (*, in_features), float64/float32/float16/bfloat16, e.g. a transformer's last hidden
    states (batch, seq, hidden). linear_weight: (num_classes, in_features), the head's weight (a
    tied embedding works), and linear_bias: (num_classes,) or None, both in input's dtype and on
    its device. target: (*) int64 class indices in [0, num_classes), or ignore_index (such rows
    contribute nothing); ignore_index None means -100, as torch's. weight: (num_classes,) the
    class weight (F.cross_entropy's `weight`), any floating dtype (used in input's dtype), or
    None. reduction: "mean" (over the class weights of the rows not ignored, as torch), "sum",
    or "none" (a loss of target's shape; its backward recomputes the logits, one GEMM more).

    Class-probability targets (target of the logits' shape (*, num_classes), floating) and
    K-dimensional linear_weight (num_classes, d_1, ..., d_K, in_features) take torch's reference
    path (the logits are materialized), with torch's rules (ignore_index must then be None).

    options: torch's LinearCrossEntropyOptions or None. Here every call is chunked (torch's
    options=None path materializes the logits; ours never does). options.batch_chunk_size: rows
    per block of logits; None (or options=None) picks default_chunk_size() (a block of at most
    about 32 MiB on CPU, 512 MiB on CUDA). The other fields change nothing here:
    chunking_method (the default block is sized in bytes, not by aspect ratio), acc_policy and
    acc_dtype (the logits are always reduced in float32 or better; the weight gradient
    accumulates in its own dtype, see the module notes), allow_retain_graph (a second backward
    through a retained graph always works: it recomputes).

    Returns the loss in input's dtype (float32 under torch.autocast, as torch's cross-entropy).
    Under autocast, input, linear_weight and linear_bias are cast like F.linear's operands; the
    logits are reduced in float32 in every case. With reduction "mean"/"sum" and gradients
    required, the forward computes the gradients too (the backward scales them): a forward whose
    loss is never differentiated costs three GEMMs instead of one; run it under torch.no_grad()
    when only the loss is wanted.

    The spelling before torch had this function (a positional bias, class_weight=,
    chunk_size=) raises a TypeError saying what to write instead.
    """
    if _positional or _keywords:
        _reject_old_spelling(_positional, _keywords)
    chunk_size = _chunk_of(options)
    if (isinstance(input, torch.Tensor) and isinstance(linear_weight, torch.Tensor)
            and isinstance(target, torch.Tensor) and input.dim() >= 1
            and (linear_weight.dim() > 2 or (target.is_floating_point() and target.shape == (
                *input.shape[:-1], linear_weight.shape[0])))):
        if ignore_index is not None and target.is_floating_point():
            raise RuntimeError("backprop_ext.linear_cross_entropy: ignore_index cannot be "
                               "specified when target contains probabilities")
        _check(reduction in _REDUCTIONS, f"reduction must be one of {_REDUCTIONS}, got "
               f"{reduction!r}", ValueError)
        return _reference(input, linear_weight, target, linear_bias, weight, reduction,
                          -100 if ignore_index is None else ignore_index, label_smoothing)
    ignore_index = -100 if ignore_index is None else ignore_index
    _check(isinstance(ignore_index, int), "expected ignore_index to be an int or None, got "
           f"{type(ignore_index).__name__}", TypeError)
    _check_args(input, linear_weight, target, linear_bias, weight, reduction, label_smoothing,
                chunk_size)
    input, linear_weight, linear_bias, autocast = _autocast(input, linear_weight, linear_bias)
    dtype = input.dtype
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        _check(t is None or t.dtype == dtype, f"expected input and {name} to have the same "
               f"dtype, got {dtype} and {t.dtype if t is not None else None}")
    out_dtype = torch.float32 if autocast and dtype in HALF_DTYPES else dtype
    x = input.reshape(-1, input.shape[-1])
    t = target.reshape(-1)
    n, v = x.shape[0], linear_weight.shape[0]
    if chunk_size is None:
        chunk_size = default_chunk_size(n, v, dtype, x.device.type)
    class_weight = weight
    if class_weight is not None:
        class_weight = class_weight.detach().to(dtype).contiguous()
    grad = torch.is_grad_enabled()
    needs = tuple(grad and p is not None and p.requires_grad for p in (x, linear_weight,
                                                                       linear_bias))
    # Precomputed gradients are held by ctx, outside saved-tensor hooks: not under checkpointing
    # or save_on_cpu, which must be able to free or move everything backward reads.
    precompute = (needs if reduction != "none" and not saved_tensors_hooked()
                  else (False, False, False))
    loss = pick(_LINEAR_CROSS_ENTROPY).apply(x, linear_weight, linear_bias, t.contiguous(),
                                             class_weight, ignore_index, float(label_smoothing),
                                             reduction, max(1, chunk_size), precompute)[0]
    if reduction == "none":
        loss = loss.reshape(target.shape)
    return loss.to(out_dtype)


def _public_signature():
    """linear_cross_entropy's signature as torch's (without the old-spelling catch-alls)."""
    sig = inspect.signature(linear_cross_entropy)
    return sig.replace(parameters=[p for p in sig.parameters.values()
                                   if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)])


linear_cross_entropy.__signature__ = _public_signature()
