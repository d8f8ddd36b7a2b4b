"""The tolerance rule and the ours/torch/float64 parity run.

The rule (after flash-attention): run torch's own op on the float64 copy of the inputs as the
reference; our result in dtype D may differ from it, element by element, by at most twice what
torch's own op in D does at that element (or at any element of no larger magnitude), plus a
floor of a few units in the last place of D (so that exact agreement of torch with the
reference does not demand exactness of us). Per element: torch's largest error over the tensor
as everyone's tolerance would let a result near zero be as far off as torch's result at the
largest magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclasses.dataclass
class Comparison:
    ok: bool
    max_err: float  # ours vs reference
    torch_err: float  # torch in the same dtype vs reference
    message: str = ""


def _error_scale(t_err: torch.Tensor, mag: torch.Tensor) -> torch.Tensor:
    """Torch's error scale at each element: its largest error at any element of no larger
    magnitude. At least torch's error there; and where torch's error at one element is rounding
    luck (a sum or a GEMM, whose error does not shrink with the result's magnitude), no smaller
    than what torch makes on results of that size or below. Never torch's error at larger
    values: a result near zero is held to what torch does near zero."""
    order = mag.flatten().argsort(stable=True)
    scale = torch.empty_like(t_err).flatten()
    scale[order] = t_err.flatten()[order].cummax(0).values
    return scale.view_as(t_err)


def compare(ours: torch.Tensor, torch_same_dtype: torch.Tensor,
            reference: torch.Tensor) -> Comparison:
    """Checks `ours` against the float64 `reference`, allowing at each element 2x torch's own
    error scale there (_error_scale) plus the floor.

    Where the reference is NaN ours must be NaN; elsewhere ours may be NaN only where torch's own
    op is NaN too (torch's float32 CPU gelu(inf) is NaN, for one). Infinities must match exactly.
    """
    if ours.shape != reference.shape:
        return Comparison(False, float("inf"), 0.0,
                          f"shape {tuple(ours.shape)} != {tuple(reference.shape)}")
    if ours.dtype != torch_same_dtype.dtype:
        return Comparison(False, float("inf"), 0.0,
                          f"dtype {ours.dtype} != {torch_same_dtype.dtype}")
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
    mag = r.abs().where(finite, zero)
    allowed = 2 * _error_scale(t_err, mag) + atol + rtol * mag
    over = err > allowed
    ok = nan_ok and inf_ok and not bool(over.any())
    msg = ""
    if not ok:
        msg = (f"max err {err.max().item():.3g} (torch {t_err.max().item():.3g}); "
               f"nan pattern ok={nan_ok}, inf pattern ok={inf_ok}")
        if over.any():
            i = int((err - allowed).where(over, zero).argmax())
            idx = (tuple(int(k) for k in torch.unravel_index(torch.tensor(i), o.shape))
                   if o.dim() else ())
            msg += (f"; {int(over.sum())} element(s) over the tolerance, worst at {idx}: ours "
                    f"{o.flatten()[i].item():.6g}, torch {t.flatten()[i].item():.6g}, reference "
                    f"{r.flatten()[i].item():.6g}, allowed error {allowed.flatten()[i].item():.3g}")
    return Comparison(ok, err.max().item(), t_err.max().item(), msg)


def assert_matches(ours: torch.Tensor, torch_same_dtype: torch.Tensor,
                   reference: torch.Tensor) -> None:
    c = compare(ours, torch_same_dtype, reference)
    assert c.ok, c.message


# --- the parity run: ours, torch in the same dtype, torch in float64


def parity(ours: Callable, theirs: Callable, inputs, *, grad: torch.Tensor | None = None,
           backward: bool = True) -> list[tuple[str, Comparison]]:
    """Runs ours(*inputs) and theirs(*inputs) on detached copies that require grad, and
    theirs on float64 copies as the reference; compares the outputs, then, with `grad` (drawn
    at random in float64 when not given) as the output's gradient, the gradient of every input
    that gets one. Returns [("out", comparison), ("grad 0", ...), ...]. Inputs that are None
    stay None; non-float inputs (targets) are passed as they are.
    """
    def leaves(cast):
        return [t if t is None or not t.is_floating_point()
                else cast(t).detach().clone().requires_grad_() for t in inputs]

    sets = [leaves(lambda t: t), leaves(lambda t: t), leaves(lambda t: t.double())]
    outs = [fn(*args) for fn, args in zip((ours, theirs, theirs), sets)]
    results = [("out", compare(*outs))]
    if outs[0].dtype != outs[1].dtype or outs[0].shape != outs[2].shape or not backward:
        return results
    if grad is None:
        grad = torch.randn(outs[2].shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(1))
    for y in outs:
        y.backward(grad.to(device=y.device, dtype=y.dtype))
    for i, (a, t, r) in enumerate(zip(*sets)):
        if r is not None and r.grad is not None:
            results.append((f"grad {i}", compare(a.grad, t.grad, r.grad)))
    return results


def assert_parity(ours: Callable, theirs: Callable, inputs, **kwargs) -> None:
    bad = [f"{what}: {c.message}" for what, c in parity(ours, theirs, inputs, **kwargs) if not c.ok]
    assert not bad, "; ".join(bad)


def jvp_of_gradient(grad_fn: Callable, primals: tuple, tangents: tuple, step: float = 1e-6):
    """torch.func.jvp(grad_fn, primals, tangents)[1] for grad_fn a gradient (x -> dL/dx) of a
    float64 function: the Hessian-vector product H t, as a reference for ours.

    Where torch's op has no forward-mode derivative of its backward, by reverse-over-reverse
    instead (H is symmetric, so the gradient's vector-Jacobian product with t is H t); where it
    has no derivative of its backward at all (torch's hardsigmoid_backward), by central
    differences of the gradient along t (exact for piecewise-linear ones, 1e-10 otherwise).
    """
    try:
        return torch.func.jvp(grad_fn, primals, tangents)[1]
    except NotImplementedError:
        pass
    out = grad_fn(*primals)
    try:
        _, vjp = torch.func.vjp(grad_fn, *primals)
        return vjp(tangents if isinstance(out, tuple) else tangents[0])
    except (NotImplementedError, RuntimeError):
        pass
    up = grad_fn(*(p + step * t for p, t in zip(primals, tangents)))
    down = grad_fn(*(p - step * t for p, t in zip(primals, tangents)))
    if isinstance(out, tuple):
        return tuple((u - d) / (2 * step) for u, d in zip(up, down))
    return (up - down) / (2 * step)
