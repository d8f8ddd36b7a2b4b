"""Float64 references and the one tolerance rule, shared by the tests and `python -m backprop_ext check`.

The rule (after flash-attention): run torch's own op on the float64 copy of the inputs as the
reference; our result in dtype D may differ from it by at most twice what torch's own op in D
does, plus a floor of a few units in the last place of D (so that exact agreement of torch with
the reference does not demand exactness of us).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as TF

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)

# Absolute and relative floor per dtype (a few ulps at 1.0).
FLOOR = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (1e-6, 1e-6),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@dataclasses.dataclass
class Comparison:
    ok: bool
    max_err: float  # ours vs reference
    torch_err: float  # torch in the same dtype vs reference
    message: str = ""


def compare(ours: torch.Tensor, torch_same_dtype: torch.Tensor, reference: torch.Tensor) -> Comparison:
    """Checks `ours` against the float64 `reference`, allowing 2x torch's own error plus the floor.

    Where the reference is NaN ours must be NaN; elsewhere ours may be NaN only where torch's own
    op is NaN too (torch's float32 CPU gelu(inf) is NaN, for one). Infinities must match exactly.
    """
    if ours.shape != reference.shape:
        return Comparison(False, float("inf"), 0.0, f"shape {tuple(ours.shape)} != {tuple(reference.shape)}")
    if ours.dtype != torch_same_dtype.dtype:
        return Comparison(False, float("inf"), 0.0, f"dtype {ours.dtype} != {torch_same_dtype.dtype}")
    o, t, r = ours.double().cpu(), torch_same_dtype.double().cpu(), reference.double().cpu()
    if o.numel() == 0:
        return Comparison(True, 0.0, 0.0)
    o_nan, t_nan, r_nan = o.isnan(), t.isnan(), r.isnan()
    nan_ok = bool((o_nan | ~r_nan).all() and (~o_nan | r_nan | t_nan).all())
    both = ~o_nan & ~r_nan
    inf_ok = bool(((o == r) | ~(o.isinf() | r.isinf()) | ~both).all())
    finite = both & o.isfinite() & r.isfinite()
    zero = torch.zeros_like(o)
    err = (o - r).abs().where(finite, zero)
    t_err = (t - r).abs().where(finite & t.isfinite(), zero)
    atol, rtol = FLOOR[ours.dtype]
    allowed = 2 * t_err.max() + atol + rtol * r.abs().where(finite, zero)
    ok = nan_ok and inf_ok and bool((err <= allowed).all())
    msg = "" if ok else (
        f"max err {err.max().item():.3g} (torch {t_err.max().item():.3g}); "
        f"nan pattern ok={nan_ok}, inf pattern ok={inf_ok}"
    )
    return Comparison(ok, err.max().item(), t_err.max().item(), msg)


def assert_matches(ours: torch.Tensor, torch_same_dtype: torch.Tensor, reference: torch.Tensor) -> None:
    c = compare(ours, torch_same_dtype, reference)
    assert c.ok, c.message


# --- references: torch's own op with the same arguments


@dataclasses.dataclass(frozen=True)
class ActivationCase:
    """One activation with its arguments, as our functional and torch's take them."""

    name: str  # our functional's name
    kwargs: tuple = ()

    @property
    def label(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs)
        return f"{self.name}({args})" if args else self.name

    def ours(self, x, **extra):
        from . import functional as BF

        return getattr(BF, self.name)(x, **dict(self.kwargs), **extra)

    def torch(self, x, **extra):
        return getattr(TF, self.name)(x, **dict(self.kwargs), **extra)


ACTIVATION_CASES = (
    ActivationCase("relu"),
    ActivationCase("leaky_relu"),
    ActivationCase("leaky_relu", (("negative_slope", 0.2),)),
    ActivationCase("gelu"),
    ActivationCase("gelu", (("approximate", "tanh"),)),
    ActivationCase("silu"),
    ActivationCase("sigmoid"),
    ActivationCase("tanh"),
    ActivationCase("softplus"),
    ActivationCase("softplus", (("beta", 2.0), ("threshold", 5.0))),
)


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
        from . import functional as BF

        return BF.linear(x, weight, bias, activation=self.activation, **extra)

    def torch(self, x, weight, bias=None):
        z = TF.linear(x, weight, bias)
        return z if self.act is None else self.act.torch(z)


LINEAR_CASES = (LinearCase(),) + tuple(LinearCase(c) for c in ACTIVATION_CASES)
