"""The activation family: relu, leaky_relu, gelu (erf and tanh), silu, sigmoid, tanh, softplus.

Reads top to bottom: the registered ops' fake kernels, the second derivatives (for double
backward), the two autograd Functions, the public functions.

Ops (csrc/registration.cpp), with `activation` one of ACTIVATIONS and two float parameters
(leaky_relu: p0 = negative_slope; softplus: p0 = beta, p1 = threshold):
    activation_fwd(x, activation, p0, p1) -> y
    activation_fwd_(x, activation, p0, p1) -> x       (in place)
    activation_bwd(grad_y, saved, activation, p0, p1) -> grad_x
where `saved` is y for relu, sigmoid and tanh (their derivative is a function of the output) and
x for the others. Saving y lets in-place forms run under autograd without copying x.
"""

from __future__ import annotations

import torch

from ._autograd import pick, save_for_forward, twin
from ._layout import elementwise_output

__all__ = ["relu", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "activation"]

ACTIVATIONS = ("relu", "leaky_relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "softplus")
SAVES_OUTPUT = frozenset({"relu", "sigmoid", "tanh"})
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

_ops = torch.ops.backprop_ext


# --- fake kernels (shapes, dtypes and strides for tracing and torch.compile)


@torch.library.register_fake("backprop_ext::activation_fwd")
def _activation_fwd_fake(x, activation, p0=0.0, p1=0.0):
    return elementwise_output(x)


@torch.library.register_fake("backprop_ext::activation_fwd_")
def _activation_fwd_inplace_fake(x, activation, p0=0.0, p1=0.0):
    return None


@torch.library.register_fake("backprop_ext::activation_bwd")
def _activation_bwd_fake(grad_output, saved, activation, p0=0.0, p1=0.0):
    torch._check(grad_output.shape == saved.shape, lambda: "activation_bwd: shape mismatch")
    return elementwise_output(grad_output, saved)


# --- second derivatives, for double backward and forward-over-reverse AD


def _dfactor_dsaved(saved: torch.Tensor, activation: str, p0: float, p1: float):
    """d/d(saved) of the factor f'(.) that activation_bwd multiplies the gradient by.

    Expressed in `saved` (the output for relu/sigmoid/tanh, the input otherwise), in composite
    torch ops so that it is itself differentiable. None where it is zero everywhere.
    """
    if activation in ("relu", "leaky_relu"):
        return None
    s = saved if saved.dtype == torch.float64 else saved.float()
    if activation == "sigmoid":  # f' = y (1 - y)
        out = 1 - 2 * s
    elif activation == "tanh":  # f' = 1 - y^2
        out = -2 * s
    elif activation == "gelu":  # f' = Phi(x) + x phi(x);  f'' = phi(x) (2 - x^2)
        pdf = torch.exp(-0.5 * s * s) * 0.3989422804014327
        out = pdf * (2 - s * s)
    elif activation == "gelu_tanh":
        beta, kappa = 0.7978845608028654, 0.044715
        t = torch.tanh(beta * (s + kappa * s * s * s))
        du = beta * (1 + 3 * kappa * s * s)  # u'
        ddu = 6 * beta * kappa * s  # u''
        out = (1 - t * t) * (du - s * t * du * du + 0.5 * s * ddu)
    elif activation == "silu":  # f' = sig (1 + x (1 - sig))
        sig = torch.sigmoid(s)
        out = sig * (1 - sig) * (2 + s * (1 - 2 * sig))
    elif activation == "softplus":  # f' = sigmoid(beta x) below the threshold, 1 above
        sig = torch.sigmoid(s * p0)
        out = torch.where(s * p0 > p1, torch.zeros_like(s), p0 * sig * (1 - sig))
    else:
        raise ValueError(f"unknown activation {activation!r}")
    return out.to(saved.dtype)


# --- autograd


class ActivationFunction(torch.autograd.Function):
    """y = f(x). Saves y or x (see SAVES_OUTPUT), never both."""

    @staticmethod
    def forward(x, activation, p0, p1):
        return _ops.activation_fwd(x, activation, p0, p1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, activation, p0, p1 = inputs
        ctx.activation, ctx.p0, ctx.p1 = activation, p0, p1
        saved = output if activation in SAVES_OUTPUT else x
        ctx.save_for_backward(saved)
        save_for_forward(ctx, saved)

    @staticmethod
    def backward(ctx, grad_output):
        (saved,) = ctx.saved_tensors
        grad = pick(_ACTIVATION_BWD).apply(
            grad_output, saved, ctx.activation, ctx.p0, ctx.p1
        )
        return grad, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        (saved,) = ctx.saved_tensors
        return _ops.activation_bwd(x_tangent, saved, ctx.activation, ctx.p0, ctx.p1)


class ActivationBackwardFunction(torch.autograd.Function):
    """grad_x = grad_y * f'(saved): the backward as a differentiable Function (double backward)."""

    @staticmethod
    def forward(grad_output, saved, activation, p0, p1):
        return _ops.activation_bwd(grad_output, saved, activation, p0, p1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_output, saved, activation, p0, p1 = inputs
        ctx.activation, ctx.p0, ctx.p1 = activation, p0, p1
        ctx.save_for_backward(grad_output, saved)
        save_for_forward(ctx, grad_output, saved)

    @staticmethod
    def backward(ctx, gg):
        grad_output, saved = ctx.saved_tensors
        d_grad = d_saved = None
        if ctx.needs_input_grad[0]:
            d_grad = pick(_ACTIVATION_BWD).apply(
                gg, saved, ctx.activation, ctx.p0, ctx.p1
            )
        if ctx.needs_input_grad[1]:
            factor = _dfactor_dsaved(saved, ctx.activation, ctx.p0, ctx.p1)
            d_saved = None if factor is None else gg * grad_output * factor
        return d_grad, d_saved, None, None, None

    @staticmethod
    def jvp(ctx, grad_tangent, saved_tangent, *_):
        grad_output, saved = ctx.saved_tensors
        out = None
        if grad_tangent is not None:
            out = _ops.activation_bwd(grad_tangent, saved, ctx.activation, ctx.p0, ctx.p1)
        factor = _dfactor_dsaved(saved, ctx.activation, ctx.p0, ctx.p1)
        if saved_tangent is not None and factor is not None:
            term = grad_output * factor * saved_tangent
            out = term if out is None else out + term
        return out if out is not None else torch.zeros_like(grad_output)


_ACTIVATION = twin(ActivationFunction)
_ACTIVATION_BWD = twin(ActivationBackwardFunction)


# --- public functions (torch.nn.functional names, arguments and defaults)


def _check_input(op: str, input) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"backprop_ext.{op}: expected input to be a Tensor, got {type(input).__name__}")
    if input.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"backprop_ext.{op}: expected input of dtype float64, float32, float16 or bfloat16, "
            f"got {input.dtype}"
        )


def _needs_autograd(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def activation(input: torch.Tensor, name: str, p0: float = 0.0, p1: float = 0.0,
               inplace: bool = False) -> torch.Tensor:
    """Applies activation `name` (one of ACTIVATIONS) elementwise; differentiable to any order.

    input: any shape, float64/float32/float16/bfloat16, CPU or CUDA. Returns a tensor of the same
    shape and dtype (or `input` itself, modified, when inplace=True).
    """
    _check_input(name, input)
    if name not in ACTIVATIONS:
        raise ValueError(f"backprop_ext: unknown activation {name!r}; expected one of {ACTIVATIONS}")
    p0, p1 = float(p0), float(p1)
    if not inplace:
        return pick(_ACTIVATION).apply(input, name, p0, p1)
    if not _needs_autograd(input):
        _ops.activation_fwd_(input, name, p0, p1)
        return input
    # In place under autograd: compute out of place and copy back, so autograd sees the
    # modification (and, like torch, refuses it on a leaf). An activation whose backward reads
    # the input gets a copy of it, since the original is about to be overwritten.
    source = input if name in SAVES_OUTPUT else input.clone()
    return input.copy_(pick(_ACTIVATION).apply(source, name, p0, p1))


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(input, 0). Same as torch.nn.functional.relu."""
    return activation(input, "relu", inplace=inplace)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """input if input > 0 else negative_slope * input. Same as torch.nn.functional.leaky_relu."""
    return activation(input, "leaky_relu", negative_slope, inplace=inplace)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """input * Phi(input); approximate='tanh' uses the tanh form. Same as F.gelu."""
    if approximate not in ("none", "tanh"):
        raise ValueError(
            f"backprop_ext.gelu: approximate must be 'none' or 'tanh', got {approximate!r}"
        )
    return activation(input, "gelu" if approximate == "none" else "gelu_tanh")


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """input * sigmoid(input). Same as torch.nn.functional.silu."""
    return activation(input, "silu", inplace=inplace)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-input)). Same as torch.nn.functional.sigmoid."""
    return activation(input, "sigmoid")


def tanh(input: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent. Same as torch.nn.functional.tanh."""
    return activation(input, "tanh")


def softplus(input: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """log(1 + exp(beta * input)) / beta, linear where beta * input > threshold. Same as F.softplus."""
    return activation(input, "softplus", beta, threshold)
