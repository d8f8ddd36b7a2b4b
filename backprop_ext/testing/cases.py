"""The case tables of every family, and clipping's parity run.

A case is an op as our function and torch's, with a maker of its differentiable inputs:
    case.label, case.ours(*inputs), case.torch(*inputs), case.make(device, dtype, small=False)
ACTIVATION_CASES, LINEAR_CASES, SOFTMAX_CASES, CROSS_ENTROPY_CASES and
LINEAR_CROSS_ENTROPY_CASES list them (CASES: all five); clipping, whose "op" updates gradients in
place, has clip_parity() instead. op_samples() lists every registered op with sample arguments.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as TF

from .compare import Comparison, compare


def _rand(shape, device, dtype, scale=1.0, seed=0) -> torch.Tensor:
    """Drawn in float64 then cast, so every dtype sees the same values."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, dtype=torch.float64, generator=g) * scale).to(device, dtype)


# --- activations


@dataclasses.dataclass(frozen=True)
class ActivationCase:
    """One activation with its arguments, as our functional and torch's take them."""

    name: str  # the torch.nn.functional name (ours has the same)
    kwargs: tuple = ()

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.name}({args})" if args else self.name

    def ours(self, x, **extra):
        from .. import functional as BF

        return getattr(BF, self.name)(x, **dict(self.kwargs), **extra)

    def torch(self, x, **extra):
        """The reference ours is tested against: torch's function, or REFERENCES' form of it."""
        fn = REFERENCES.get(self.name) or getattr(TF, self.name)
        return fn(x, **dict(self.kwargs), **extra)

    def torch_own(self, x, **extra):
        """What a torch user runs, for timing: torch.nn.functional's own function where it has
        one (REFERENCES' NaN-gradient adjustments cost extra passes), the reference otherwise."""
        fn = getattr(TF, self.name, None) or REFERENCES[self.name]
        return fn(x, **dict(self.kwargs), **extra)

    def make(self, device, dtype, small=False):
        """A sweep over [-12, 12], through every branch of every activation's math (vector body
        and scalar tail); small: 16 values off the kinks, for gradcheck."""
        if not small:
            return (torch.linspace(-12, 12, 10_007, dtype=torch.float64).to(device, dtype),)
        x = _rand(16, "cpu", torch.float64, 3.0)
        return ((x + 0.1 * torch.sign(x)).to(device, dtype),)


def _nan_gradient(fn: Callable, value: float) -> Callable:
    """torch's fn, except that the gradient at a NaN input is `value` wherever the element sits.

    torch's relu6, elu, selu and hardswish give one gradient at a NaN input in their vectorized
    loops and another (the incoming gradient) in their scalar tails, so their result there depends
    on the element's position. Ours gives what the vectorized loops give, everywhere; this is the
    reference with that position dependence taken out, and nothing else changed.
    """
    def reference(x, *args, inplace=False, **kwargs):
        if inplace:
            return fn(x, *args, inplace=True, **kwargs)
        nan = x.isnan()
        y = fn(torch.where(nan, 0, x), *args, **kwargs)
        slope = torch.zeros_like(x).masked_fill(nan, value)  # (NaN only where selected)
        return torch.where(nan, x * slope, y)  # fn(NaN) is NaN for all of them

    return reference


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """transformers' QuickGELUActivation, x sigmoid(1.702 x), computed as one torch op would be:
    in float32 for the half types, rounded once."""
    z = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (z * torch.sigmoid(1.702 * z)).to(x.dtype)


# The reference of each activation whose torch.nn.functional function is missing (quick_gelu)
# or position-dependent at NaN; torch's own function otherwise.
REFERENCES: dict[str, Callable] = {
    "quick_gelu": _quick_gelu,
    "relu6": _nan_gradient(TF.relu6, 0.0),
    "elu": _nan_gradient(TF.elu, math.nan),
    "selu": _nan_gradient(TF.selu, math.nan),
    "hardswish": _nan_gradient(TF.hardswish, math.nan),
}


# Parameters besides torch's defaults worth a case of their own (a slope, a threshold the test
# data crosses). Optional per activation: every row of the table gets its default case anyway.
EXTRA_ACTIVATION_PARAMS = {
    "leaky_relu": (("negative_slope", 0.2),),
    "softplus": (("beta", 2.0), ("threshold", 5.0)),
    "elu": (("alpha", 0.5),),
}


def activation_case(name: str, extra: tuple = ()) -> ActivationCase:
    """The activation table's row `name` at torch's defaults (its string parameters as the row
    needs them, where they differ from torch's default), with `extra` parameters."""
    from ..ops.activation import FUNCTION_ROWS, SPECS

    spec = SPECS[name]
    default = dict(FUNCTION_ROWS[spec.function][0].selector)
    picked = tuple((k, v) for k, v in spec.selector if default[k] != v)
    return ActivationCase(spec.function, picked + extra)


def _activation_cases() -> tuple[ActivationCase, ...]:
    """Every row of the activation table at torch's defaults, then the extra parameter sets."""
    from ..ops.activation import ACTIVATIONS

    cases = []
    for name in ACTIVATIONS:
        cases.append(activation_case(name))
        if name in EXTRA_ACTIVATION_PARAMS:
            cases.append(activation_case(name, EXTRA_ACTIVATION_PARAMS[name]))
    return tuple(cases)


ACTIVATION_CASES = _activation_cases()


# --- linear


@dataclasses.dataclass(frozen=True)
class LinearCase:
    """linear() with one activation (or none): ours fused, torch's as F.linear then F.<act>."""

    act: ActivationCase | None = None

    @property
    def label(self) -> str:
        return "linear" if self.act is None else f"linear+{self.act.label}"

    @property
    def activation(self):
        """Our linear()'s activation argument: (name, {torch's keyword arguments})."""
        return None if self.act is None else (self.act.name, dict(self.act.kwargs))

    def ours(self, x, weight, bias=None, **extra):
        from .. import functional as BF

        return BF.linear(x, weight, bias, activation=self.activation, **extra)

    def torch(self, x, weight, bias=None):
        z = TF.linear(x, weight, bias)
        return z if self.act is None else self.act.torch(z)

    def make(self, device, dtype, small=False):
        m, k, n = (5, 4, 3) if small else (37, 16, 24)
        return (_rand((m, k), device, dtype, seed=1), _rand((n, k), device, dtype, 0.25, seed=2),
                _rand((n,), device, dtype, 0.25, seed=3))


LINEAR_CASES = (LinearCase(),) + tuple(LinearCase(c) for c in ACTIVATION_CASES)


# --- softmax family


@dataclasses.dataclass(frozen=True)
class SoftmaxCase:
    """softmax, log_softmax or logsumexp along `dim` (an int or a tuple for logsumexp)."""

    name: str
    dim: int | tuple = -1

    @property
    def label(self) -> str:
        return f"{self.name}(dim={self.dim})"

    def ours(self, x):
        from .. import functional as BF

        return getattr(BF, self.name)(x, self.dim)

    def torch(self, x):
        fn = torch.logsumexp if self.name == "logsumexp" else getattr(TF, self.name)
        return fn(x, self.dim)

    def make(self, device, dtype, small=False):
        return (_rand((3, 5) if small else (6, 37), device, dtype, 3.0),)


SOFTMAX_CASES = (
    SoftmaxCase("softmax", -1), SoftmaxCase("softmax", 0), SoftmaxCase("log_softmax", -1),
    SoftmaxCase("log_softmax", 0), SoftmaxCase("logsumexp", -1), SoftmaxCase("logsumexp", (0, 1)),
)


@dataclasses.dataclass(frozen=True)
class CrossEntropyCase:
    """cross_entropy over (N, C) logits with class-index targets (one ignored) and class weights."""

    kwargs: tuple = ()
    weighted: bool = True

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs)
        weight = "weight," if self.weighted else ""
        return f"cross_entropy({weight}ignore{',' + args if args else ''})"

    def _call(self, F, logits):
        n, c = logits.shape
        target = (torch.arange(n, device=logits.device) * 7 + 3) % c
        target[2 % n] = -100
        weight = None
        if self.weighted:
            weight = (_rand((c,), torch.device("cpu"), torch.float64, seed=4).abs() + 0.5).to(
                logits.device, logits.dtype)
        return F.cross_entropy(logits, target, weight=weight, **dict(self.kwargs))

    def ours(self, logits):
        from .. import functional as BF

        return self._call(BF, logits)

    def torch(self, logits):
        return self._call(TF, logits)

    def make(self, device, dtype, small=False):
        return (_rand((3, 5) if small else (6, 37), device, dtype, 3.0),)


CROSS_ENTROPY_CASES = (
    CrossEntropyCase(),
    CrossEntropyCase((("label_smoothing", 0.1), ("reduction", "none"))),
    CrossEntropyCase((("reduction", "sum"),), weighted=False),
)



@dataclasses.dataclass(frozen=True)
class LinearCrossEntropyCase:
    """linear_cross_entropy(x, weight, target, linear_bias=bias) against torch's
    F.cross_entropy(F.linear(x, weight, bias), target), class-index targets (one ignored) and
    class weights, in blocks of a quarter of the rows (so every case has a partial last block)."""

    kwargs: tuple = ()
    weighted: bool = True

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return (f"linear_cross_entropy({'weight,' if self.weighted else ''}ignore"
                f"{',' + args if args else ''})")

    def _targets(self, x, weight):
        n, v = x.shape[0], weight.shape[0]
        target = (torch.arange(n, device=x.device) * 7 + 3) % v
        target[2 % n] = -100
        class_weight = None
        if self.weighted:
            class_weight = (_rand((v,), "cpu", torch.float64, seed=4).abs() + 0.5).to(
                x.device, x.dtype)
        return target, class_weight

    def ours(self, x, weight, bias=None):
        from .. import functional as BF

        target, class_weight = self._targets(x, weight)
        options = BF.LinearCrossEntropyOptions(batch_chunk_size=max(2, x.shape[0] // 4))
        return BF.linear_cross_entropy(x, weight, target, linear_bias=bias, weight=class_weight,
                                       options=options, **dict(self.kwargs))

    def torch(self, x, weight, bias=None):
        target, class_weight = self._targets(x, weight)
        return TF.cross_entropy(TF.linear(x, weight, bias), target, weight=class_weight,
                                **dict(self.kwargs))

    def make(self, device, dtype, small=False):
        n, h, v = (5, 4, 6) if small else (37, 16, 24)
        return (_rand((n, h), device, dtype, seed=1), _rand((v, h), device, dtype, 0.5, seed=2),
                _rand((v,), device, dtype, 0.5, seed=3))


LINEAR_CROSS_ENTROPY_CASES = (
    LinearCrossEntropyCase(),
    LinearCrossEntropyCase((("label_smoothing", 0.1), ("reduction", "none"))),
    LinearCrossEntropyCase((("reduction", "sum"),), weighted=False),
)

CASES = (ACTIVATION_CASES + LINEAR_CASES + SOFTMAX_CASES + CROSS_ENTROPY_CASES
         + LINEAR_CROSS_ENTROPY_CASES)


# --- clipping (the multi-tensor family)

CLIP_NORM_TYPES = (2.0, math.inf, 1.0, 0.5, 3.0)
CLIP_SIZES = (1, 7, 1023, 70_001)  # one element, odd sizes, past a 65536-element chunk


def clip_parity(device: str, dtype: torch.dtype, norm_type: float) -> list[tuple[str, Comparison]]:
    """backprop_ext.utils.clip_grad_norm_ against torch.nn.utils' on the same gradients, by the
    float64-reference rule: the returned norm, then every clipped gradient."""
    from .. import utils as BU

    scale = 1e-3 if dtype == torch.float16 else 1.0  # keep torch's float16 norms finite
    sizes = CLIP_SIZES[:3] if dtype == torch.float16 and norm_type < 1 else CLIP_SIZES
    grads = [_rand((n,), "cpu", torch.float64, scale, seed=i) for i, n in enumerate(sizes)]
    sets = []
    for d in (dtype, dtype, torch.float64):
        params = [torch.nn.Parameter(torch.empty(g.shape, dtype=d, device=device)) for g in grads]
        for q, g in zip(params, grads):
            q.grad = g.to(device=device, dtype=d)
        sets.append(params)
    ours, theirs, ref = sets
    ref_norm = torch.nn.utils.get_total_norm([q.grad for q in ref], norm_type)
    max_norm = 0.5 * ref_norm.item()  # clipping happens
    torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    results = [("norm", compare(BU.clip_grad_norm_(ours, max_norm, norm_type),
                                torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type),
                                ref_norm))]
    results += [(f"grad {i}", compare(a.grad, b.grad, r.grad))
                for i, (a, b, r) in enumerate(zip(ours, theirs, ref))]
    return results


def clip_value_matches(device: str, dtype: torch.dtype, clip_value: float = 0.5) -> bool:
    """clip_grad_value_ against torch.nn.utils', bit for bit (a clamp rounds nothing)."""
    from .. import utils as BU

    grads = [_rand((n,), device, dtype, seed=i) for i, n in enumerate(CLIP_SIZES)]
    pairs = []
    for fn in (BU.clip_grad_value_, torch.nn.utils.clip_grad_value_):
        params = [torch.nn.Parameter(torch.empty_like(g)) for g in grads]
        for q, g in zip(params, grads):
            q.grad = g.clone()
        fn(params, clip_value)
        pairs.append(params)
    return all(torch.equal(a.grad, b.grad) for a, b in zip(*pairs))


# --- every registered op with sample arguments (opcheck, raw-op autograd)


def op_samples(device="cpu", dtype=torch.float32, requires_grad: bool = True) -> list:
    """[(label, op, args)]: every op of torch.ops.backprop_ext with arguments that exercise it
    (every activation row, both softmax directions, every cross-entropy reduction, linear with
    and without bias, activation and pre-activation kept, gated units); floating arguments
    require grad when `requires_grad` (the in-place and out= ops' mutated arguments never do)."""
    from ..ops.activation import SPECS

    ops = torch.ops.backprop_ext
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0, grad=requires_grad):
        t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)
        return t.requires_grad_(grad)

    samples = []
    for name, spec in SPECS.items():
        p0, p1 = spec.floats({"negative_slope": 0.1, "beta": 1.5, "threshold": 2.0})
        x = rand(3, 4, scale=2.0)
        y = ops.activation_fwd(x.detach(), name, p0, p1)
        saved = y if spec.saves_output else x.detach()
        samples += [
            (f"activation_fwd-{name}", ops.activation_fwd.default, (x, name, p0, p1)),
            (f"activation_bwd-{name}", ops.activation_bwd.default,
             (rand(3, 4), saved.clone().requires_grad_(requires_grad), name, p0, p1)),
        ]
    samples.append(("activation_fwd_", ops.activation_fwd_.default,
                    (rand(3, 4, grad=False), "gelu", 0.0, 0.0)))
    for shape, dim in (((4, 7), 1), ((4, 7), 0), ((3, 5, 2), 1)):
        for log in (False, True):
            x = rand(*shape)
            y = ops.softmax_fwd(x.detach(), dim, log)
            samples += [
                (f"softmax_fwd-{dim}-{log}", ops.softmax_fwd.default, (x, dim, log)),
                (f"softmax_bwd-{dim}-{log}", ops.softmax_bwd.default,
                 (rand(*shape), y.requires_grad_(requires_grad), dim, log)),
            ]
        x = rand(*shape)
        r = ops.logsumexp_fwd(x.detach(), dim)
        samples += [
            (f"logsumexp_fwd-{dim}", ops.logsumexp_fwd.default, (x, dim)),
            (f"logsumexp_bwd-{dim}", ops.logsumexp_bwd.default,
             (rand(*r.shape), rand(*shape), r.requires_grad_(requires_grad), dim)),
        ]
    target = torch.tensor([0, 6, -100, 3], device=device)
    weight = torch.rand(7, generator=g, dtype=torch.float64).add(0.5).to(device, dtype)
    for w, eps in ((None, 0.0), (weight, 0.1)):
        logits = rand(4, 7)
        lse = ops.cross_entropy_fwd(logits.detach(), target, w, -100, eps > 0)[2]
        samples += [
            (f"cross_entropy_fwd-{eps}", ops.cross_entropy_fwd.default,
             (logits, target, w, -100, eps > 0)),
            (f"cross_entropy_bwd-{eps}", ops.cross_entropy_bwd.default,
             (logits, target, w, lse, rand(4), rand(4) if eps else None, -100)),
            (f"cross_entropy_bwd_out-{eps}", ops.cross_entropy_bwd_out.default,
             (logits, target, w, lse, rand(4), rand(4) if eps else None, -100,
              torch.empty(4, 7, device=device, dtype=dtype))),
        ]
        for reduction in ("mean", "sum", "none"):
            samples.append((f"cross_entropy_loss_fwd-{eps}-{reduction}",
                            ops.cross_entropy_loss_fwd.default,
                            (rand(4, 7), target, w, -100, eps, reduction)))
    samples += [
        ("cross_entropy-indices", ops.cross_entropy.default,
         (rand(2, 7, 3), torch.tensor([[0, 6, -100], [3, 3, 1]], device=device), weight, "mean",
          -100, 0.1)),
        ("cross_entropy-probabilities", ops.cross_entropy.default,
         (rand(4, 7), torch.rand(4, 7, generator=g).softmax(1).to(device, dtype), None, "sum",
          -100, 0.0)),
    ]
    for activation, p0, p1 in (("none", 0.0, 0.0), ("relu", 0.0, 0.0), ("gelu", 0.0, 0.0),
                               ("leaky_relu", 0.1, 0.0), ("softplus", 1.5, 2.0)):
        for bias, save_preact in ((True, True), (False, False)):
            x, w, b = rand(2, 3, 8), rand(6, 8, scale=0.3), rand(6) if bias else None
            samples.append((f"linear_fwd-{activation}-{bias}-{save_preact}",
                            ops.linear_fwd.default, (x, w, b, activation, p0, p1, save_preact)))
        x, w, b = rand(5, 8), rand(6, 8, scale=0.3), rand(6)
        out, preact = ops.linear_fwd(x.detach(), w.detach(), b.detach(), activation, p0, p1,
                                     True)
        saved = preact if preact.numel() else out
        for mask in ((True, True, True), (False, True, False)):
            samples.append((f"linear_bwd-{activation}-{''.join(str(int(m)) for m in mask)}",
                            ops.linear_bwd.default,
                            (rand(5, 6), x, w, saved.requires_grad_(requires_grad), activation,
                             p0, p1, list(mask))))
        if activation != "none":
            for want_bias in (True, False):
                samples.append((f"linear_preact_bwd-{activation}-{want_bias}",
                                ops.linear_preact_bwd.default,
                                (rand(2, 5, 6), saved.detach().expand(2, 5, 6).clone()
                                 .requires_grad_(requires_grad), activation, p0, p1, want_bias)))
    for activation, p0, p1 in (("silu", 0.0, 0.0), ("gelu_tanh", 0.0, 0.0), ("relu", 0.0, 0.0)):
        samples += [
            (f"gated_fwd-{activation}", ops.gated_fwd.default,
             (rand(3, 4), rand(3, 4), activation, p0, p1)),
            (f"gated_bwd-{activation}", ops.gated_bwd.default,
             (rand(3, 4), rand(3, 4), rand(3, 4), activation, p0, p1)),
        ]
    return samples
