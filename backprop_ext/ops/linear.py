"""The linear family: out = act(input @ weight.T + bias), with the bias and activation fused into
the matrix products' epilogues, forward and backward.

Reads top to bottom: the `activation` argument, the registered ops' fake kernels, the two autograd
Functions (the layer, and its backward as a differentiable Function), the public function.

Ops (csrc/ops/schemas.cpp), `activation` being "none" or a row of the activation table
(activation.ACTIVATIONS) with its two float parameters:
    linear_fwd(input, weight, bias, activation, p0, p1, save_preact) -> (out, preact)
    linear_bwd(grad_out, input, weight, saved, activation, p0, p1, output_mask)
        -> (grad_input, grad_weight, grad_bias)
    linear_preact_bwd(grad_out, saved, activation, p0, p1, want_bias) -> (grad_preact, grad_bias)
        linear_bwd's first pass alone (an activation, not "none")

Kernels. CPU: the products are ATen's (at::mm / at::addmm, the BLAS torch's own linear calls);
ours are the pass after the forward GEMM (z += b, y = act(z), one read of z) and the backward pass
(gz = gy act'(s) and the bias gradient, the column sums of gz, in one read of gy and s).
CUDA: the forward GEMM is a cuBLASLt call with the bias in its epilogue, followed by our
activation kernel; the backward is our fused kernel (bias gradient reduced in fp32 in two
deterministic stages) and the two products; with no activation the bias gradient comes from the
weight-gradient GEMM's BGRADB epilogue. BACKPROP_EXT_LINEAR_EPILOGUE=cublaslt (read once per
process) moves relu and gelu_tanh into cuBLASLt's own epilogues instead (RELU_BIAS, GELU_AUX_BIAS
with the pre-activation as aux output): which of the two is faster on a given GPU is to be
measured. The cuBLASLt calls follow torch's matmul flags (allow_tf32, the fp16/bf16
reduced-precision and split-K settings, fp16 accumulation).

Autograd and vmap: LinearFunction and LinearBackwardFunction hold the formulas of linear_fwd and
linear_bwd (see autograd.py), so the raw ops, exported programs and functorch transforms
differentiate as linear() does; linear() itself is one call of linear_fwd.

Memory. Backward needs input and weight (autograd holds them for any linear layer) and one M x N
tensor, `saved`: nothing for "none"; the output for relu, relu6, sigmoid and tanh, whose derivative
reads it (the next layer usually holds it anyway); the pre-activation z for the others (never z
and the output both). With recompute_preact=True those keep no z:
backward recomputes it with one more GEMM (a third more FLOPs for the layer's fwd+bwd), which saves
M x N elements per layer for as long as the graph lives. When the input came back from
saved-tensor hooks (checkpointing rebuilds it, save_on_cpu copies it back) backward drops it as
soon as the weight gradient is taken, before the input gradient is allocated, so the two are never
alive together: the same kernels in another order (linear_preact_bwd, linear_bwd for the weight,
a product for the input), the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import _C
from . import entry as _ops
from .activation import (
    ACTIVATIONS,
    SAVES_OUTPUT,
    ActivationBackwardFunction,
    _dfactor_dsaved,
    resolve,
)
from .autograd import batch_first, register, save_for_forward
from .dtypes import FLOAT_DTYPES
from .errors import raise_public

__all__ = ["linear", "parse_activation"]


# --- the activation argument


def parse_activation(spec) -> tuple[str, float, float]:
    """The `activation` argument of linear() -> (op name, p0, p1) for the registered ops.

    spec: None; a name, a torch.nn.functional activation ("relu", "leaky_relu", "gelu", "silu",
    "sigmoid", "tanh", "softplus", ...: torch's default parameters) or a row of the activation
    table ("gelu_tanh"); or a tuple of a name and its torch.nn.functional parameters, positional
    in torch's order and/or as a trailing dict: ("leaky_relu", 0.2), ("gelu", "tanh"),
    ("softplus", 2.0, 10.0), ("softplus", {"beta": 2.0}).
    """
    if spec is None:
        return "none", 0.0, 0.0
    if isinstance(spec, str):
        name, args, kwargs = spec, [], {}
    elif isinstance(spec, (tuple, list)) and spec and isinstance(spec[0], str):
        name, args = spec[0], list(spec[1:])
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
    else:
        raise TypeError(
            "backprop_ext.linear: activation must be None, a name or a (name, *params) tuple, "
            f"got {spec!r}"
        )
    row, p0, p1 = resolve(name, args, kwargs, who="backprop_ext.linear")
    return row.name, p0, p1


# The activations whose backward reads the pre-activation (the derivative is a function of the
# input, not of the output).
_KEEPS_PREACT = frozenset(a for a in ACTIVATIONS if a not in SAVES_OUTPUT)


def _keeps_preact(activation: str) -> bool:
    return activation in _KEEPS_PREACT


# activation argument -> parse_activation(argument), for the arguments seen so far (the few a
# model uses; parsing a string costs more than a tiny call), bounded; unhashable ones (a tuple
# holding a dict) are parsed at each call. The one cache of linear, Linear and gated.
_PARSED: dict = {None: ("none", 0.0, 0.0)}
_PARSED_MAX = 1024


def parsed_activation(spec) -> tuple[str, float, float]:
    try:
        return _PARSED[spec]
    except KeyError:
        parsed = parse_activation(spec)
        if len(_PARSED) < _PARSED_MAX:
            _PARSED[spec] = parsed
        return parsed
    except TypeError:
        return parse_activation(spec)


# --- fake kernels (shapes, dtypes and strides for tracing and torch.compile), with the same
# checks and messages as check_linear_args in csrc/ops/linear.cpp


def _check_args(op: str, input, weight, bias) -> None:
    if input.dtype not in FLOAT_DTYPES:
        raise RuntimeError(
            f"{op}: expected input to be a float64, float32, float16 or bfloat16 tensor, "
            f"but got {input.dtype}"
        )
    if input.dim() < 1:
        raise RuntimeError(
            f"{op}: expected input of shape (*, in_features) with at least 1 dimension, "
            "but got a 0-d tensor"
        )
    if weight.dim() != 2:
        raise RuntimeError(
            f"{op}: expected weight of shape (out_features, in_features), but got shape "
            f"{list(weight.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.device != input.device:
            raise RuntimeError(
                f"{op}: expected input and {name} to be on the same device, but got input on "
                f"{input.device} and {name} on {t.device}"
            )
        if t.dtype != input.dtype:
            raise RuntimeError(
                f"{op}: expected input and {name} to have the same dtype, but got {input.dtype} "
                f"and {t.dtype}"
            )
    torch._check(
        input.shape[-1] == weight.shape[1],
        lambda: f"{op}: expected input.shape[-1] == weight.shape[1] (in_features), but got input "
        f"of shape {list(input.shape)} and weight of shape {list(weight.shape)}",
    )
    if bias is not None:
        torch._check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: f"{op}: expected bias of shape (out_features,) = ({weight.shape[0]},), "
            f"but got shape {list(bias.shape)}",
        )


@torch.library.register_fake("backprop_ext::linear_fwd")
def _linear_fwd_fake(input, weight, bias, activation, p0, p1, save_preact):
    _check_args("linear_fwd", input, weight, bias)
    shape = (*input.shape[:-1], weight.shape[0])
    out = input.new_empty(shape)
    keep = save_preact and _keeps_preact(activation)
    return out, input.new_empty(shape if keep else (0,))


@torch.library.register_fake("backprop_ext::linear_bwd")
def _linear_bwd_fake(grad_output, input, weight, saved, activation, p0, p1, output_mask):
    _check_args("linear_bwd", input, weight, None)
    shape = (*input.shape[:-1], weight.shape[0])
    torch._check(
        tuple(grad_output.shape) == shape,
        lambda: f"linear_bwd: expected grad_output of shape {list(shape)}, got "
        f"{list(grad_output.shape)}",
    )
    # Gradients not asked for are empty tensors, each its own (outputs never alias).
    return (
        input.new_empty(input.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        weight.new_empty(weight.shape[:1] if output_mask[2] else (0,)),
    )


@torch.library.register_fake("backprop_ext::linear_preact_bwd")
def _linear_preact_bwd_fake(grad_output, saved, activation, p0, p1, want_bias):
    if activation == "none":
        raise RuntimeError(
            "linear_preact_bwd: expected an activation (with \"none\" the pre-activation's "
            "gradient is grad_output itself)")
    if grad_output.dim() < 1:
        raise RuntimeError(
            "linear_preact_bwd: expected grad_output of shape (*, out_features) with at least 1 "
            "dimension, but got a 0-d tensor")
    torch._check(
        grad_output.shape == saved.shape,
        lambda: f"linear_preact_bwd: expected grad_output and saved to have the same shape, "
        f"but got {list(grad_output.shape)} and {list(saved.shape)}",
    )
    return (grad_output.new_empty(grad_output.shape),
            grad_output.new_empty(grad_output.shape[-1:] if want_bias else (0,)))


# --- autograd


def _preact_grad(grad_output, saved, activation, p0, p1):
    """gz = grad_output * act'(saved), differentiable (double backward, forward-over-reverse)."""
    if activation == "none":
        return grad_output
    return _ops.activation_bwd(grad_output, saved, activation, p0, p1)


class LinearFunction(torch.autograd.Function):
    """(out, preact) = linear_fwd(...); linear() returns `out`. Its formulas are linear_fwd's
    autograd and vmap.

    preact is an output, not a hidden intermediate, so that double backward, which differentiates
    the backward through the pre-activation it read, reaches the layer again through it.
    """

    @staticmethod
    def forward(input, weight, bias, activation, p0, p1, save_preact):
        return _ops.linear_fwd(input, weight, bias, activation, p0, p1, save_preact)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, activation, p0, p1, save_preact = inputs
        out, preact = output
        ctx.activation, ctx.p0, ctx.p1 = activation, p0, p1
        ctx.has_bias = bias is not None
        ctx.preact_kept = save_preact and _keeps_preact(activation)
        if activation == "none":
            saved = None
        elif activation in SAVES_OUTPUT:
            saved = out
        else:
            saved = preact if ctx.preact_kept else None  # None: recomputed in backward
        ctx.recompute = _keeps_preact(activation) and not ctx.preact_kept
        # Saved through hooks, the input comes back in backward as a tensor of its own, which
        # backward can free early (see the module docstring).
        ctx.input_hooked = torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
        # The bias is kept only to recompute z; it is a parameter, so this costs no memory.
        ctx.save_for_backward(input, weight, bias if ctx.recompute else None, saved)
        save_for_forward(ctx, input, weight, bias, saved)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad_out, grad_preact):
        mask = _wanted(ctx, (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                             ctx.needs_input_grad[2] and ctx.has_bias))
        if (grad_out is not None and grad_preact is None and ctx.input_hooked and mask[0]
                and mask[1] and not torch.is_grad_enabled()):
            return _input_freeing_backward(ctx, grad_out, mask)
        input, weight, bias, saved = ctx.saved_tensors
        empty = input.new_empty((0,))
        if ctx.recompute:  # z = x W^T + b once more (differentiable, should a graph be built)
            saved = _ops.linear_fwd(input, weight, bias, "none", 0.0, 0.0, False)[0]
        saved = saved if saved is not None else empty
        grads = (None, None, None)
        if grad_out is not None:
            grads = _ops.linear_bwd(grad_out, input, weight, saved, ctx.activation, ctx.p0,
                                    ctx.p1, mask)
        if grad_preact is not None and ctx.preact_kept:
            # Only a double backward sends a gradient into preact: dz adds to dz from dout.
            extra = _ops.linear_bwd(grad_preact, input, weight, empty, "none", 0.0, 0.0, mask)
            grads = [e if g is None else g + e for g, e in zip(grads, extra)]
        grads = [g if m else None for g, m in zip(grads, mask)]
        return (*grads, None, None, None, None)

    @staticmethod
    def jvp(ctx, input_t, weight_t, bias_t, *_):
        input, weight, bias, saved = ctx.saved_tensors
        # z_t = x_t W^T + x W_t^T + b_t
        terms = []
        if input_t is not None:
            terms.append(TF.linear(input_t, weight))
        if weight_t is not None:
            terms.append(TF.linear(input, weight_t))
        shape = (*input.shape[:-1], weight.shape[0])
        z_t = sum(terms[1:], terms[0]) if terms else input.new_zeros(shape)
        if bias_t is not None:
            z_t = z_t + bias_t
        empty = input.new_zeros((0,))
        if ctx.activation == "none":
            return z_t, empty
        if saved is None:  # the pre-activation was not kept: recompute it
            saved = _ops.linear_fwd(input, weight, bias, "none", 0.0, 0.0, False)[0]
        out_t = _ops.activation_bwd(z_t.contiguous(), saved, ctx.activation, ctx.p0, ctx.p1)
        return out_t, (z_t if ctx.preact_kept else empty)

    @staticmethod
    def vmap(info, in_dims, input, weight, bias, activation, p0, p1, save_preact):
        x_dim, w_dim, b_dim = in_dims[:3]
        keep = save_preact and _keeps_preact(activation)
        if w_dim is None and b_dim is None:
            # One weight for every sample: the batch is one more leading dim of the input.
            out, preact = _ops.linear_fwd(input.movedim(x_dim, 0), weight, bias, activation, p0,
                                          p1, save_preact)
            return (out, preact), (0, 0 if keep else None)
        # A weight (or a bias) per sample: batched products, then the activation.
        B = info.batch_size
        x = batch_first(input, x_dim, B) if x_dim is not None else input.unsqueeze(0)
        vector = x.dim() == 2  # per-sample input of shape (in_features,)
        if vector:
            x = x.unsqueeze(1)
        lead = x.dim() - 2  # per-sample leading dims (at least one)
        w = batch_first(weight, w_dim, B) if w_dim is not None else weight.unsqueeze(0)
        w_t = w.transpose(-1, -2).reshape(w.shape[0], *[1] * (lead - 1), w.shape[2], w.shape[1])
        z = torch.matmul(x, w_t)
        if bias is not None:
            b = batch_first(bias, b_dim, B) if b_dim is not None else bias.unsqueeze(0)
            z = z + b.reshape(b.shape[0], *[1] * lead, b.shape[1])
        if vector:
            z = z.squeeze(1)
        if activation == "none":
            out = z
        else:
            out = _ops.activation_fwd(z.contiguous(), activation, p0, p1)
        if keep:
            return (out, z), (0, 0)
        return (out, z.new_empty((0,))), (0, None)


def _wanted(ctx, mask: tuple) -> tuple:
    """mask less the gradients this backward pass will not use. torch.autograd.grad(out, inputs)
    runs only the paths to `inputs` and tells torch's own nodes so (its matrix product then skips
    the weight gradient's GEMM); a Function's needs_input_grad does not, so ask the engine whether
    it will run the node each gradient goes to. Edges: input, weight, then bias when given (a
    Function's edges are its tensor arguments)."""
    if not (mask[1] or mask[2]) or torch._C._current_graph_task_id() == -1 or (
            torch.compiler.is_compiling()):
        return mask
    edges = ctx.next_functions
    return tuple(m and _runs(edges[i][0]) for i, m in enumerate(mask))


def _runs(node) -> bool:
    """Whether the current backward pass runs `node` (or captures the gradient sent to it).
    Not torch._C._will_engine_execute_node, which raises for a leaf's AccumulateGrad that
    autograd.grad captures (one of its `inputs`) rather than answer: an error costing more than
    the whole backward of a small layer."""
    return node is not None and _C._engine_runs(node)


def _input_freeing_backward(ctx, grad_out, mask) -> tuple:
    """LinearFunction.backward for grad_input and grad_weight (no double backward): linear_bwd's
    kernels with the weight gradient first and the input dropped before the input gradient is
    allocated, so the same bits. The saved tensors are unpacked here, so that no caller's
    reference keeps the input alive."""
    input, weight, bias, saved = ctx.saved_tensors
    if ctx.recompute:
        saved = _ops.linear_fwd(input, weight, bias, "none", 0.0, 0.0, False)[0]
    gz, bias_from_act = grad_out, False
    if ctx.activation != "none":  # gz and the bias gradient in linear_bwd's one pass
        gz, grad_bias = _ops.linear_preact_bwd(grad_out, saved, ctx.activation, ctx.p0, ctx.p1,
                                               mask[2])
        bias_from_act = True
    del saved
    _, grad_weight, bias_from_gemm = _ops.linear_bwd(
        gz, input, weight, input.new_empty((0,)), "none", 0.0, 0.0,
        (False, True, mask[2] and not bias_from_act))
    if not bias_from_act:
        grad_bias = bias_from_gemm
    shape = input.shape
    del input
    gz2d = gz if gz.dim() == 2 else gz.reshape(-1, weight.shape[0])
    grad_input = gz2d.contiguous().mm(weight).view(shape)
    return grad_input, grad_weight, grad_bias if mask[2] else None, None, None, None, None


class LinearBackwardFunction(torch.autograd.Function):
    """(grad_input, grad_weight, grad_bias) = linear_bwd(...), as a differentiable Function.

    With gz = grad_out * act'(saved) (M x N), the outputs are gz W, gz^T x and sum_rows gz; their
    derivatives are composed below from torch ops and the activation family's differentiable
    backward, so the layer is differentiable to any order.
    """

    @staticmethod
    def forward(grad_out, input, weight, saved, activation, p0, p1, mask):
        return _ops.linear_bwd(grad_out, input, weight, saved, activation, p0, p1, mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, input, weight, saved, activation, p0, p1, mask = inputs
        ctx.activation, ctx.p0, ctx.p1, ctx.mask = activation, p0, p1, tuple(mask)
        ctx.save_for_backward(grad_out, input, weight, saved)
        save_for_forward(ctx, grad_out, input, weight, saved)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_input, gg_weight, gg_bias):
        grad_out, input, weight, saved = ctx.saved_tensors
        n, k = weight.shape
        g2, x2 = grad_out.reshape(-1, n), input.reshape(-1, k)
        s2 = saved.reshape(-1, n) if ctx.activation != "none" else saved
        gg_input = gg_input if ctx.mask[0] else None
        gg_weight = gg_weight if ctx.mask[1] else None
        gg_bias = gg_bias if ctx.mask[2] else None
        need_grad_out, need_input, need_weight, need_saved = ctx.needs_input_grad[:4]

        # dL/dgz, summed over the three outputs' uses of gz.
        d_gz = None
        for term in (
            gg_input.reshape(-1, k) @ weight.t() if gg_input is not None else None,  # from gz W
            x2 @ gg_weight.t() if gg_weight is not None else None,  # from gz^T x
            gg_bias.expand(g2.shape) if gg_bias is not None else None,  # from sum_rows gz
        ):
            if term is not None:
                d_gz = term if d_gz is None else d_gz + term
        needs_gz = (need_input and gg_weight is not None) or (need_weight and gg_input is not None)
        gz = _preact_grad(g2, s2, ctx.activation, ctx.p0, ctx.p1) if needs_gz else None

        d_grad_out = d_input = d_weight = d_saved = None
        if need_grad_out and d_gz is not None:
            d_grad_out = _preact_grad(d_gz, s2, ctx.activation, ctx.p0, ctx.p1).reshape(
                grad_out.shape)
        if need_input and gg_weight is not None:
            d_input = (gz @ gg_weight).reshape(input.shape)
        if need_weight and gg_input is not None:
            d_weight = gz.t() @ gg_input.reshape(-1, k)
        if need_saved and d_gz is not None and ctx.activation != "none":
            factor = _dfactor_dsaved(s2, ctx.activation, ctx.p0, ctx.p1)
            if factor is not None:
                d_saved = (d_gz * g2 * factor).reshape(saved.shape)
        return d_grad_out, d_input, d_weight, d_saved, None, None, None, None

    @staticmethod
    def jvp(ctx, grad_out_t, input_t, weight_t, saved_t, *_):
        grad_out, input, weight, saved = ctx.saved_tensors
        n, k = weight.shape
        g2, x2 = grad_out.reshape(-1, n), input.reshape(-1, k)
        act, p0, p1 = ctx.activation, ctx.p0, ctx.p1
        # Tangent of gz = grad_out * act'(saved).
        if act == "none":
            gz = g2
            gz_t = grad_out_t.reshape(-1, n) if grad_out_t is not None else None
        else:
            s2 = saved.reshape(-1, n)
            gz = _ops.activation_bwd(g2.contiguous(), s2.contiguous(), act, p0, p1)
            gz_t = None
            if grad_out_t is not None:
                gz_t = _ops.activation_bwd(grad_out_t.reshape(-1, n).contiguous(), s2.contiguous(),
                                           act, p0, p1)
            factor = _dfactor_dsaved(s2, act, p0, p1)
            if saved_t is not None and factor is not None:
                term = g2 * factor * saved_t.reshape(-1, n)
                gz_t = term if gz_t is None else gz_t + term

        def total(*terms):
            terms = [t for t in terms if t is not None]
            return sum(terms[1:], terms[0]) if terms else None

        empty = input.new_zeros((0,))
        out = []
        if ctx.mask[0]:
            t = total(gz_t @ weight if gz_t is not None else None,
                      gz @ weight_t if weight_t is not None else None)
            out.append(t.reshape(input.shape) if t is not None else torch.zeros_like(input))
        else:
            out.append(empty)
        if ctx.mask[1]:
            t = total(gz_t.t() @ x2 if gz_t is not None else None,
                      gz.t() @ input_t.reshape(-1, k) if input_t is not None else None)
            out.append(t if t is not None else torch.zeros_like(weight))
        else:
            out.append(empty)
        if ctx.mask[2]:
            out.append(gz_t.sum(0) if gz_t is not None else weight.new_zeros((n,)))
        else:
            out.append(empty)
        return tuple(out)


    @staticmethod
    def vmap(info, in_dims, grad_out, input, weight, saved, activation, p0, p1, mask):
        # Per sample: gz = grad_out * act'(saved); grad_input = gz W, grad_weight = gz^T x,
        # grad_bias = the column sums of gz: products batched over the samples.
        B = info.batch_size
        g_dim, x_dim, w_dim, s_dim = in_dims[:4]
        g, x = batch_first(grad_out, g_dim, B), batch_first(input, x_dim, B)
        n, k = weight.shape[-2:]
        g2, x2 = g.reshape(B, -1, n), x.reshape(B, -1, k)
        gz = g2
        if activation != "none":
            s2 = batch_first(saved, s_dim, B).reshape(B, -1, n)
            gz = _ops.activation_bwd(g2.contiguous(), s2.contiguous(), activation, p0, p1)
        w = batch_first(weight, w_dim, B) if w_dim is not None else weight
        empty = input.new_empty((0,))
        grads = (torch.matmul(gz, w).reshape(x.shape) if mask[0] else empty,
                 torch.matmul(gz.transpose(1, 2), x2) if mask[1] else empty,
                 gz.sum(1) if mask[2] else empty)
        return grads, tuple(0 if m else None for m in mask)


class LinearPreactBackwardFunction(torch.autograd.Function):
    """(grad_preact, grad_bias) = linear_preact_bwd(...): activation_bwd's result and its column
    sums, so its formulas are ActivationBackwardFunction's, applied to the sum of the gradients
    reaching grad_preact directly and through grad_bias."""

    @staticmethod
    def forward(grad_out, saved, activation, p0, p1, want_bias):
        return _ops.linear_preact_bwd(grad_out, saved, activation, p0, p1, want_bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, saved, activation, p0, p1, want_bias = inputs
        ctx.activation, ctx.p0, ctx.p1, ctx.want_bias = activation, p0, p1, want_bias
        ctx.save_for_backward(grad_out, saved)
        save_for_forward(ctx, grad_out, saved)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gg_preact, gg_bias):
        grad_out = ctx.saved_tensors[0]
        gg = gg_preact
        if ctx.want_bias and gg_bias is not None:
            term = gg_bias.expand(grad_out.shape)
            gg = term if gg is None else gg + term
        if gg is None:
            return (None,) * 6
        return (*ActivationBackwardFunction.backward(ctx, gg.contiguous())[:2], None, None, None,
                None)

    @staticmethod
    def jvp(ctx, grad_out_t, saved_t, *_):
        gz_t = ActivationBackwardFunction.jvp(ctx, grad_out_t, saved_t)
        n = gz_t.shape[-1]
        return gz_t, gz_t.reshape(-1, n).sum(0) if ctx.want_bias else gz_t.new_zeros((0,))

    @staticmethod
    def vmap(info, in_dims, grad_out, saved, activation, p0, p1, want_bias):
        B = info.batch_size
        g = batch_first(grad_out, in_dims[0], B).contiguous()
        s = batch_first(saved, in_dims[1], B).contiguous()
        gz = _ops.activation_bwd(g, s, activation, p0, p1)
        if want_bias:
            return (gz, gz.reshape(B, -1, gz.shape[-1]).sum(1)), (0, 0)
        return (gz, gz.new_empty((0,))), (0, None)


register("linear_fwd", LinearFunction)
register("linear_bwd", LinearBackwardFunction)
register("linear_preact_bwd", LinearPreactBackwardFunction)


# --- public function


# The op as ops.entry calls it, without its wrapper's frame: the entry point in eager mode, the op
# itself under torch.compile (as the generated activation functions call theirs).
_linear_fwd = _C.linear_fwd
_linear_fwd_op = torch.ops.backprop_ext.linear_fwd.default
_is_compiling = torch.compiler.is_compiling

_LINEAR_ARGS = (("input", "Tensor", None), ("weight", "Tensor", None), ("bias", "Tensor?", None),
                ("activation", "any", None), ("recompute_preact", "any", None))


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           activation=None, recompute_preact: bool = False) -> torch.Tensor:
    """act(input @ weight.T + bias), forward and backward fused; with activation=None the same as
    torch.nn.functional.linear.

    input: (*, in_features), at least 1-D. weight: (out_features, in_features). bias:
    (out_features,) or None. All float64, float32, float16 or bfloat16 of one dtype, on one
    device (CPU or CUDA); under torch.autocast they are cast as torch's linear casts them. Returns
    (*, out_features) in that dtype.

    activation: None, an activation's name (a torch.nn.functional name such as "gelu" or
    "leaky_relu", or a row of the activation table such as "gelu_tanh": see
    backprop_ext.ops.activation.ACTIVATIONS) or a (name, *params) tuple with torch.nn.functional's
    parameters in torch's order, e.g. ("leaky_relu", 0.2), ("gelu", "tanh"), ("softplus", 2.0,
    10.0); a dict as the last item names them: ("softplus", {"threshold": 10.0}). See
    parse_activation().

    recompute_preact: for activations whose backward reads the pre-activation (all but relu,
    sigmoid and tanh, see activation.SAVES_OUTPUT), do not keep it for backward but recompute it
    there (one more GEMM): saves an (*, out_features) tensor per layer. No effect for the others,
    which keep nothing beyond the output.
    """
    try:
        if activation is None:  # torch's linear: nothing to parse, no pre-activation to keep
            name, p0, p1, save_preact = "none", 0.0, 0.0, False
        else:
            name, p0, p1 = parsed_activation(activation)
            # Keep the pre-activation when backward will read it; the rule recomputes it if a
            # gradient turns out to be needed after all, so this decides speed, not results.
            save_preact = (name in _KEEPS_PREACT and not recompute_preact
                           and torch.is_grad_enabled()
                           and (input.requires_grad or weight.requires_grad
                                or (bias is not None and bias.requires_grad)))
        if _is_compiling():
            return _linear_fwd_op(input, weight, bias, name, p0, p1, save_preact)[0]
        return _linear_fwd(input, weight, bias, name, p0, p1, save_preact)[0]
    except Exception as error:
        raise_public(error, "linear", _LINEAR_ARGS,
                     (input, weight, bias, activation, recompute_preact))
        raise

