"""The gated family: gated linear units, y = f(gate) * up, in one pass each way.

f is any row of the activation table (backprop_ext.activation), so that no math is written twice:
SwiGLU is the silu row, GeGLU the gelu or gelu_tanh row. In a Llama-style MLP,
down_proj(f(gate_proj(x)) * up_proj(x)), torch runs f and the product as two passes and keeps
f(gate) for backward beside gate and up; ours runs one pass forward, one backward producing both
gradients, and keeps gate and up only, recomputing f(gate) in backward.

Reads top to bottom: the registered ops' fake kernels, the derivatives (one place for every
formula), the two autograd Functions (the unit, and its backward as a differentiable Function for
double backward), the public functions.

Ops (csrc/ops/schemas.cpp), `activation` a row name with its float parameters p0, p1:
    gated_fwd(gate, up, activation, p0, p1) -> y = f(gate) * up
    gated_bwd(grad, gate, up, activation, p0, p1) -> (grad * up * f'(gate), grad * f(gate))
"""

from __future__ import annotations

import torch

from . import entry as _ops
from .activation import SAVES_OUTPUT, _dfactor_dsaved
from .autograd import batch_first, register, save_for_forward
from .dtypes import FLOAT_DTYPES
from .errors import raise_public
from .layout import elementwise_output
from .linear import parsed_activation

__all__ = ["gated", "swiglu", "geglu"]


# --- fake kernels (shapes, dtypes and strides for tracing and torch.compile)


@torch.library.register_fake("backprop_ext::gated_fwd")
def _gated_fwd_fake(gate, up, activation, p0=0.0, p1=0.0):
    torch._check(gate.shape == up.shape, lambda: "gated_fwd: gate and up must have one shape")
    return elementwise_output(gate, up)


@torch.library.register_fake("backprop_ext::gated_bwd")
def _gated_bwd_fake(grad, gate, up, activation, p0=0.0, p1=0.0):
    torch._check(grad.shape == gate.shape == up.shape,
                 lambda: "gated_bwd: grad, gate and up must have one shape")
    out = elementwise_output(grad, gate, up)
    return out, torch.empty_like(out)


# --- derivatives: every formula of the family, differentiable (they call the activation
# family's Functions), so that double backward and forward-over-reverse compose.
#
#   y         = f(gate) up
#   grad_gate = grad up f'(gate)        grad_up = grad f(gate)


def _f(gate, act):
    """f(gate)."""
    return _ops.activation_fwd(gate, *act)


def _df(v, gate, act):
    """v f'(gate). Rows whose derivative reads the output get f(gate), recomputed."""
    saved = _f(gate, act) if act[0] in SAVES_OUTPUT else gate
    return _ops.activation_bwd(v, saved, *act)


def _ddf(v, gate, act):
    """v f''(gate), or None where f'' is zero. The activation family's second derivatives are
    d f'/d(saved): for the rows reading their output, f'' = (d f'/dy) f'(gate)."""
    if act[0] in SAVES_OUTPUT:
        d = _dfactor_dsaved(_f(gate, act), *act)
        return None if d is None else _df(v * d, gate, act)
    d = _dfactor_dsaved(gate, *act)
    return None if d is None else v * d


def _add(a, b):
    return b if a is None else a if b is None else a + b


# --- autograd


class GatedFunction(torch.autograd.Function):
    """y = f(gate) * up: gated_fwd(gate, up, activation, p0, p1). Saves gate and up; backward
    recomputes f(gate) in its one pass. Its formulas are gated_fwd's autograd and vmap."""

    @staticmethod
    def forward(gate, up, activation, p0, p1):
        return _ops.gated_fwd(gate, up, activation, p0, p1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        gate, up, activation, p0, p1 = inputs
        ctx.act = (activation, p0, p1)
        ctx.save_for_backward(gate, up)
        save_for_forward(ctx, gate, up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_gate, grad_up = _ops.gated_bwd(grad, gate, up, *ctx.act)
        return (grad_gate if ctx.needs_input_grad[0] else None,
                grad_up if ctx.needs_input_grad[1] else None, None, None, None)

    @staticmethod
    def jvp(ctx, gate_t, up_t, *_):
        # dy = up f'(gate) dgate + f(gate) dup
        gate, up = ctx.saved_tensors
        out = None
        if gate_t is not None:
            out = _ops.gated_bwd(gate_t, gate, up, *ctx.act)[0]
        if up_t is not None:
            out = _add(out, _ops.gated_fwd(gate, up_t, *ctx.act))
        return out if out is not None else torch.zeros_like(gate)

    @staticmethod
    def vmap(info, in_dims, gate, up, activation, p0=0.0, p1=0.0):
        if in_dims[0] == in_dims[1]:  # both batched alike: elementwise as they are
            return _ops.gated_fwd(gate, up, activation, p0, p1), in_dims[0]
        gate, up = (batch_first(t, d, info.batch_size) for t, d in zip((gate, up), in_dims))
        return _ops.gated_fwd(gate, up, activation, p0, p1), 0


class GatedBackwardFunction(torch.autograd.Function):
    """(grad_gate, grad_up) = (grad up f'(gate), grad f(gate)): gated_bwd, differentiable (double
    backward, forward-over-reverse)."""

    @staticmethod
    def forward(grad, gate, up, activation, p0, p1):
        return _ops.gated_bwd(grad, gate, up, activation, p0, p1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tensors, ctx.act = inputs[:3], inputs[3:]  # (grad, gate, up), (activation, p0, p1)
        ctx.save_for_backward(*tensors)
        save_for_forward(ctx, *tensors)

    @staticmethod
    def backward(ctx, gg_gate, gg_up):
        grad, gate, up = ctx.saved_tensors
        act = ctx.act
        d_grad = d_gate = d_up = None
        if ctx.needs_input_grad[0]:  # d/dgrad: up f' gg_gate + f gg_up
            d_grad = _add(_df(gg_gate * up, gate, act), gg_up * _f(gate, act))
        if ctx.needs_input_grad[1]:  # d/dgate: grad up f'' gg_gate + grad f' gg_up
            d_gate = _add(_ddf(gg_gate * grad * up, gate, act), _df(gg_up * grad, gate, act))
        if ctx.needs_input_grad[2]:  # d/dup: grad f' gg_gate
            d_up = _df(gg_gate * grad, gate, act)
        return d_grad, d_gate, d_up, None, None, None

    @staticmethod
    def jvp(ctx, grad_t, gate_t, up_t, *_):
        grad, gate, up = ctx.saved_tensors
        act = ctx.act
        t_gate = t_up = None  # tangents of grad_gate and grad_up
        if grad_t is not None:
            t_gate = _df(grad_t * up, gate, act)
            t_up = grad_t * _f(gate, act)
        if up_t is not None:
            t_gate = _add(t_gate, _df(grad * up_t, gate, act))
        if gate_t is not None:
            t_gate = _add(t_gate, _ddf(grad * up * gate_t, gate, act))
            t_up = _add(t_up, _df(grad * gate_t, gate, act))
        zeros = torch.zeros_like(grad)
        return (t_gate if t_gate is not None else zeros, t_up if t_up is not None else zeros)

    @staticmethod
    def vmap(info, in_dims, grad, gate, up, activation, p0=0.0, p1=0.0):
        if in_dims[0] == in_dims[1] == in_dims[2]:  # all batched alike: elementwise
            return _ops.gated_bwd(grad, gate, up, activation, p0, p1), (in_dims[0],) * 2
        args = (batch_first(t, d, info.batch_size) for t, d in zip((grad, gate, up), in_dims))
        return _ops.gated_bwd(*args, activation, p0, p1), (0, 0)


register("gated_fwd", GatedFunction)
register("gated_bwd", GatedBackwardFunction)


# --- public functions


_GATED_ARGS = (("gate", "Tensor", None), ("up", "Tensor", None), ("activation", "any", None))


def gated(gate: torch.Tensor, up: torch.Tensor, activation="silu") -> torch.Tensor:
    """f(gate) * up, f the activation: one pass forward, one backward producing both gradients,
    keeping gate and up for backward (not f(gate)). Differentiable to any order; forward-mode AD.

    gate, up: float64/float32/float16/bfloat16 tensors on one device, of one shape or shapes that
    broadcast (mixed dtypes promote as torch's f(gate) * up does). activation: what
    backprop_ext.functional.linear takes, a name or (name, *params): "silu" (SwiGLU), "gelu" or
    ("gelu", "tanh") (GeGLU), ("leaky_relu", 0.2), ... Returns the product, in the broadcast
    shape and the promoted dtype.
    """
    try:
        if activation is None:
            raise ValueError("backprop_ext.gated: activation must be a name or (name, *params), "
                             "not None")
        return _gated(gate, up, *parsed_activation(activation))
    except Exception as error:
        raise_public(error, "gated", _GATED_ARGS, (gate, up, activation))
        raise


def _gated(gate, up, row: str, p0: float, p1: float) -> torch.Tensor:
    # The common call, one dtype and one shape, goes straight to the op (which checks the rest);
    # the checks below cost a call on tiny tensors more than the op itself.
    if (type(gate) is torch.Tensor and type(up) is torch.Tensor and gate.dtype == up.dtype
            and gate.shape == up.shape):
        return _ops.gated_fwd(gate, up, row, p0, p1)
    if not (isinstance(gate, torch.Tensor) and isinstance(up, torch.Tensor)):
        raise TypeError(f"backprop_ext.gated: expected gate and up to be Tensors, got "
                        f"{type(gate).__name__} and {type(up).__name__}")
    if gate.dtype != up.dtype:  # promoted as torch's f(gate) * up, floats only (as f takes)
        if gate.dtype not in FLOAT_DTYPES or up.dtype not in FLOAT_DTYPES:
            raise TypeError(f"backprop_ext.gated: expected gate and up of dtype float64, float32, "
                            f"float16 or bfloat16, got {gate.dtype} and {up.dtype}")
        dtype = torch.promote_types(gate.dtype, up.dtype)
        gate, up = gate.to(dtype), up.to(dtype)
    if gate.shape != up.shape:
        gate, up = torch.broadcast_tensors(gate, up)
    return _ops.gated_fwd(gate, up, row, p0, p1)


_SWIGLU_ARGS = (("gate", "Tensor", None), ("up", "Tensor", None))


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (SwiGLU: Llama, Mistral, Qwen2 MLPs), fused; see gated()."""
    try:
        return _gated(gate, up, "silu", 0.0, 0.0)
    except Exception as error:
        raise_public(error, "swiglu", _SWIGLU_ARGS, (gate, up))
        raise


_GEGLU_ARGS = (("gate", "Tensor", None), ("up", "Tensor", None), ("approximate", "str", None))


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(gate, approximate=approximate) * up (GeGLU: Gemma's MLP takes approximate="tanh"),
    fused; see gated()."""
    try:
        return gated(gate, up, ("gelu", approximate))
    except Exception as error:
        raise_public(error, "geglu", _GEGLU_ARGS, (gate, up, approximate))
        raise

