"""The activation family: relu, leaky_relu, gelu (erf and tanh), silu, sigmoid, tanh, softplus,
hardsigmoid, hardswish, relu6, elu, selu, mish and quick_gelu.

The list of activations is csrc/ops/activation_table.h's, read here through
backprop_ext._C.activation_table(); the Python side is derived from it: the names the ops take,
which rows save their output, linear's `activation` argument and the test cases
(backprop_ext.testing); and, written out as source by `python -m backprop_ext.ops.generate`, the
torch.nn.functional-shaped public functions (ops/activation_functions.py, torch's signatures)
and the torch.nn Modules (nn/activations.py). Adding an activation adds its row and its math
there and its second derivative here (_SECOND_DERIVATIVES), then reruns the generator.

Reads top to bottom: the table, the registered ops' fake kernels, the second derivatives (for
double backward), the two autograd Functions (the formulas of the ops' autograd and vmap, see
autograd.py), the generic public function activation().

Ops (csrc/ops/schemas.cpp), with `activation` a row name and p0, p1 the row's float parameters
in torch's order (leaky_relu: negative_slope; softplus: beta, threshold):
    activation_fwd(x, activation, p0, p1) -> y
    activation_fwd_(x, activation, p0, p1) -> x       (in place)
    activation_bwd(grad_y, saved, activation, p0, p1) -> grad_x
where `saved` is y for the rows that save their output (SAVES_OUTPUT: relu, relu6, sigmoid and
tanh, whose derivative is a function of the output) and x for the others. Saving y lets in-place
forms run under autograd without copying x.

A public function is one call of an op (ops.entry): its argument checks are the op's, in
C++; what is to be differentiated (grad mode, forward mode, functorch) the op's entry point
decides.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable

import torch

from .. import _C
from . import entry as _ops
from .autograd import batch_first, register, save_for_forward
from .layout import elementwise_output

# --- the table (csrc/ops/activation_table.h)


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """One row of the activation table, with its torch.nn.functional signature parsed."""

    name: str  # what the ops take
    saves_output: bool  # the backward op takes y (else x)
    signature: str  # the torch.nn.functional call the row computes
    module: str  # the torch.nn Module computing it
    function: str  # torch.nn.functional's name
    arguments: tuple[tuple[str, object], ...]  # the parameters after `input`, torch's order
    params: tuple[str, ...]  # the float ones: p0, p1
    selector: tuple[tuple[str, str], ...]  # the string ones, with the values picking this row
    inplace: bool  # torch has an in-place form

    def floats(self, values: dict) -> tuple[float, float]:
        """(p0, p1) from parameter values by name, defaults for the missing ones."""
        defaults = dict(self.arguments)
        out = [float(values.get(p, defaults[p])) for p in self.params]
        return (*out, 0.0, 0.0)[:2]


def _parse_row(name: str, saves_output: bool, signature: str, module: str) -> ActivationSpec:
    call = ast.parse(signature, mode="eval").body
    arguments = tuple((kw.arg, ast.literal_eval(kw.value)) for kw in call.keywords)
    params = tuple(a for a, v in arguments if a != "inplace" and not isinstance(v, str))
    if len(params) > 2:
        raise RuntimeError(f"activation table: {name!r} has more than two float parameters")
    return ActivationSpec(
        name=name, saves_output=bool(saves_output), signature=signature, module=module,
        function=call.func.id, arguments=arguments, params=params,
        selector=tuple((a, v) for a, v in arguments if isinstance(v, str)),
        inplace=any(a == "inplace" for a, _ in arguments))


SPECS: dict[str, ActivationSpec] = {row[0]: _parse_row(*row) for row in _C.activation_table()}
ACTIVATIONS = tuple(SPECS)
SAVES_OUTPUT = frozenset(name for name, spec in SPECS.items() if spec.saves_output)

# torch.nn.functional name -> its rows; several where a string parameter picks the row (gelu's
# approximate), the first one holding torch's default.
FUNCTION_ROWS: dict[str, tuple[ActivationSpec, ...]] = {}
for _spec in SPECS.values():
    FUNCTION_ROWS[_spec.function] = FUNCTION_ROWS.get(_spec.function, ()) + (_spec,)
del _spec


def resolve(name: str, args=(), kwargs=None, *, who: str = "backprop_ext"):
    """(row, p0, p1) computing torch.nn.functional.<name>(input, *args, **kwargs).

    `name` is a torch.nn.functional name ("gelu") or a row name ("gelu_tanh"); args and kwargs
    are its parameters other than `inplace`. Raises ValueError naming `who` for an unknown name,
    a parameter it does not have, or a value no row computes.
    """
    if name in FUNCTION_ROWS:
        rows = FUNCTION_ROWS[name]
        names = tuple(a for a, _ in rows[0].arguments if a != "inplace")
    elif name in SPECS:  # a row's own name: its string parameters are fixed
        rows = (SPECS[name],)
        names = rows[0].params
    else:
        known = tuple(dict.fromkeys((*FUNCTION_ROWS, *SPECS)))
        raise ValueError(f"{who}: unknown activation {name!r}; expected None or one of {known}")
    if len(args) > len(names):
        raise ValueError(f"{who}: activation {name!r} takes {len(names)} parameter(s) {names}, "
                         f"got {len(args)}: {tuple(args)}")
    values = dict(zip(names, args))
    for key, value in (kwargs or {}).items():
        if key not in names:
            raise ValueError(f"{who}: activation {name!r} has no parameter {key!r}")
        values[key] = value
    for spec in rows:
        if all(values.get(key, default) == picked
               for (key, picked), (_, default) in zip(spec.selector, rows[0].selector)):
            return (spec, *spec.floats(values))
    key = rows[0].selector[0][0]
    choices = " or ".join(repr(dict(s.selector)[key]) for s in rows)
    raise ValueError(f"{who}: {key} must be {choices}, got {values[key]!r}")


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
#
# For each row, d/d(saved) of the factor f'(.) that activation_bwd multiplies the gradient by,
# expressed in `saved` (y for the rows saving their output, x otherwise) with composite torch ops
# so that it is itself differentiable; None where it is zero everywhere. s is float32 or float64.

_BETA, _KAPPA = 0.7978845608028654, 0.044715  # gelu_tanh's sqrt(2 / pi) and cubic coefficient
_PDF = 0.3989422804014327  # 1 / sqrt(2 pi)


def _gelu_tanh_second(s, p0, p1):
    t = torch.tanh(_BETA * (s + _KAPPA * s * s * s))
    du = _BETA * (1 + 3 * _KAPPA * s * s)  # u'
    ddu = 6 * _BETA * _KAPPA * s  # u''
    return (1 - t * t) * (du - s * t * du * du + 0.5 * s * ddu)


def _silu_second(s, p0, p1):  # f' = sig (1 + x (1 - sig))
    sig = torch.sigmoid(s)
    return sig * (1 - sig) * (2 + s * (1 - 2 * sig))


def _softplus_second(s, beta, threshold):  # f' = sigmoid(beta x) below the threshold, 1 above
    sig = torch.sigmoid(s * beta)
    return torch.where(s * beta > threshold, torch.zeros_like(s), beta * sig * (1 - sig))


def _elu_second(s, alpha, scale=1.0):  # f' = scale alpha e^x at x <= 0, scale above
    return torch.where(s > 0, torch.zeros_like(s), (alpha * scale) * torch.exp(s))


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _mish_second(s, p0, p1):  # f' = t + x sig (1 - t^2), t = tanh(softplus(x)), t' = sig (1 - t^2)
    t = torch.tanh(torch.log1p(torch.exp(s)))
    sig = torch.sigmoid(s)
    return (1 - t * t) * sig * (2 + s * (1 - sig - 2 * t * sig))


_QUICK_GELU = 1.702


def _quick_gelu_second(s, p0, p1):  # f' = sig (1 + a x (1 - sig)), sig = sigmoid(a x)
    sig = torch.sigmoid(_QUICK_GELU * s)
    return _QUICK_GELU * sig * (1 - sig) * (2 + _QUICK_GELU * s * (1 - 2 * sig))


_SECOND_DERIVATIVES: dict[str, Callable | None] = {
    "relu": None,
    "leaky_relu": None,
    "gelu": lambda s, p0, p1: torch.exp(-0.5 * s * s) * _PDF * (2 - s * s),  # phi(x) (2 - x^2)
    "gelu_tanh": _gelu_tanh_second,
    "silu": _silu_second,
    "sigmoid": lambda y, p0, p1: 1 - 2 * y,  # f' = y (1 - y)
    "tanh": lambda y, p0, p1: -2 * y,  # f' = 1 - y^2
    "softplus": _softplus_second,
    "hardsigmoid": None,  # f' = 1/6 between -3 and 3
    "hardswish": lambda s, p0, p1: ((s > -3) & (s < 3)).to(s.dtype) / 3,  # f' = x/3 + 1/2 inside
    "relu6": None,
    "elu": lambda s, alpha, p1: _elu_second(s, alpha),
    "selu": lambda s, p0, p1: _elu_second(s, _SELU_ALPHA, _SELU_SCALE),
    "mish": _mish_second,
    "quick_gelu": _quick_gelu_second,
}


def _dfactor_dsaved(saved: torch.Tensor, activation: str, p0: float, p1: float):
    """d/d(saved) of activation_bwd's factor f'(saved), differentiable; None where it is 0."""
    try:
        second = _SECOND_DERIVATIVES[activation]
    except KeyError:
        raise NotImplementedError(
            f"backprop_ext: activation {activation!r} has no second derivative in "
            "backprop_ext.ops.activation._SECOND_DERIVATIVES") from None
    if second is None:
        return None
    s = saved if saved.dtype == torch.float64 else saved.float()
    return second(s, p0, p1).to(saved.dtype)


# --- autograd


class ActivationFunction(torch.autograd.Function):
    """y = f(x): activation_fwd(x, activation, p0, p1). Saves y or x (see SAVES_OUTPUT), never
    both. Its formulas are activation_fwd's autograd and vmap."""

    @staticmethod
    def forward(x, activation, p0=0.0, p1=0.0):
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
        grad = _ops.activation_bwd(grad_output, saved, ctx.activation, ctx.p0, ctx.p1)
        return grad, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        (saved,) = ctx.saved_tensors
        return _ops.activation_bwd(x_tangent, saved, ctx.activation, ctx.p0, ctx.p1)

    @staticmethod
    def vmap(info, in_dims, x, activation, p0=0.0, p1=0.0):
        return _ops.activation_fwd(x, activation, p0, p1), in_dims[0]  # elementwise


class ActivationBackwardFunction(torch.autograd.Function):
    """grad_x = grad_y * f'(saved): activation_bwd, differentiable (double backward)."""

    @staticmethod
    def forward(grad_output, saved, activation, p0=0.0, p1=0.0):
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
            d_grad = _ops.activation_bwd(gg, saved, ctx.activation, ctx.p0, ctx.p1)
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

    @staticmethod
    def vmap(info, in_dims, grad_output, saved, activation, p0=0.0, p1=0.0):
        g_dim, s_dim = in_dims[:2]
        if g_dim == s_dim:  # both batched alike: elementwise as they are
            return _ops.activation_bwd(grad_output, saved, activation, p0, p1), g_dim
        g = batch_first(grad_output, g_dim, info.batch_size)
        s = batch_first(saved, s_dim, info.batch_size)
        return _ops.activation_bwd(g, s, activation, p0, p1), 0


def _activation_inplace(x, activation, p0=0.0, p1=0.0):
    """activation_fwd_'s autograd: out of place, then copied back, so that autograd sees the
    write (and, like torch, refuses it on a leaf that requires grad). An activation whose
    backward reads its input gets a copy of it, since the original is about to be overwritten."""
    source = x if activation in SAVES_OUTPUT else x.clone()
    x.copy_(_ops.activation_fwd(source, activation, p0, p1))


def _activation_inplace_vmap(info, in_dims, x, activation, p0=0.0, p1=0.0):
    _ops.activation_fwd_(x, activation, p0, p1)  # elementwise, in place on the batched tensor
    return None, None


register("activation_fwd", ActivationFunction)
register("activation_bwd", ActivationBackwardFunction)
_C._set_autograd_rule("activation_fwd_", _activation_inplace)
torch.library.register_vmap("backprop_ext::activation_fwd_", _activation_inplace_vmap)


# --- public functions (torch.nn.functional names, arguments and defaults)


def activation(input: torch.Tensor, name: str, p0: float = 0.0, p1: float = 0.0,
               inplace: bool = False) -> torch.Tensor:
    """Applies the activation table's row `name` (one of ACTIVATIONS) elementwise, with float
    parameters p0, p1; differentiable to any order.

    input: any shape, float64/float32/float16/bfloat16, CPU or CUDA. Returns a tensor of the same
    shape and dtype (or `input` itself, modified, when inplace=True).
    """
    if name not in SPECS:
        raise ValueError(
            f"backprop_ext: unknown activation {name!r}; expected one of {ACTIVATIONS}")
    if inplace:
        _ops.activation_fwd_(input, name, p0, p1)
        return input
    return _ops.activation_fwd(input, name, p0, p1)


def bad_selector(function: str, values: tuple) -> None:
    """Raises for string parameters (gelu's approximate) that pick no row of `function`: a
    RuntimeError, as torch's for the same value."""
    rows = FUNCTION_ROWS[function]
    for i, (key, _) in enumerate(rows[0].selector):
        choices = " or ".join(repr(dict(s.selector)[key]) for s in rows)
        if values[i] not in {dict(s.selector)[key] for s in rows}:
            raise RuntimeError(f"backprop_ext.{function}: {key} must be {choices}, got "
                             f"{values[i]!r}")
    raise RuntimeError(f"backprop_ext.{function}: no activation computes {values!r}")


# The torch.nn.functional-shaped functions themselves (relu, gelu, ...) are written out from the
# table in ops/activation_functions.py, and the Modules in nn/activations.py, by ops/generate.py.

__all__ = ["activation", "resolve", "bad_selector", "ACTIVATIONS", "SAVES_OUTPUT", "SPECS",
           "FUNCTION_ROWS", "ActivationSpec", "ActivationFunction", "ActivationBackwardFunction"]
