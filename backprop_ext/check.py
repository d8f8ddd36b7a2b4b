"""`python -m backprop_ext check`: every op, every device and dtype, against torch.

For each op: parity of forward and backward against torch's own op on a float64 reference
(testing.compare's rule) in every dtype, and in float64 gradcheck, gradgradcheck and forward-mode
AD against torch.func.jvp of torch's op. Prints op x device x dtype -> pass/fail and max error.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from .testing import ACTIVATION_CASES, DTYPES, LINEAR_CASES, compare, devices


@dataclasses.dataclass
class CheckResult:
    op: str
    device: str
    dtype: str
    test: str
    ok: bool
    max_err: float = 0.0
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class CheckCase:
    """An op as our function and torch's, and a maker of (differentiable) float inputs."""

    label: str
    ours: Callable
    theirs: Callable
    make: Callable[[str, torch.dtype], torch.Tensor]


def _activation_checks() -> list[CheckCase]:
    def make(device, dtype):
        x = torch.randn(257, dtype=torch.float64) * 3
        return (x + 0.1 * torch.sign(x)).to(device=device, dtype=dtype)  # off the kinks

    return [CheckCase(c.label, c.ours, c.torch, make) for c in ACTIVATION_CASES]


def _linear_checks() -> list[CheckCase]:
    """linear() with each activation, as a function of its input; the weight and bias are fixed
    (tests/test_linear.py checks the gradients of all three)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 16, generator=g, dtype=torch.float64) / 4
    bias = torch.randn(24, generator=g, dtype=torch.float64) / 4

    def make(device, dtype):
        x = torch.randn(37, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        return x.to(device=device, dtype=dtype)

    def bind(fn):
        return lambda x: fn(x, weight.to(x), bias.to(x))

    return [CheckCase(c.label, bind(c.ours), bind(c.torch), make) for c in LINEAR_CASES]


def all_cases() -> list[CheckCase]:
    return _activation_checks() + _linear_checks()


def _parity(case: CheckCase, device: str, dtype: torch.dtype) -> CheckResult:
    x = case.make(device, dtype)
    xo, xt, xr = (x.detach().requires_grad_(), x.detach().requires_grad_(),
                  x.detach().double().requires_grad_())
    yo, yt, yr = case.ours(xo), case.theirs(xt), case.theirs(xr)
    g = torch.randn(yr.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    fwd = compare(yo, yt, yr)
    yo.backward(g)
    yt.backward(g)
    yr.backward(g.double())
    bwd = compare(xo.grad, xt.grad, xr.grad)
    ok = fwd.ok and bwd.ok
    return CheckResult(case.label, device, str(dtype).removeprefix("torch."), "parity fwd+bwd", ok,
                       max(fwd.max_err, bwd.max_err), fwd.message or bwd.message)


def _autograd(case: CheckCase, device: str) -> list[CheckResult]:
    out = []
    x = case.make(device, torch.float64)[:16].detach().requires_grad_()
    for test, fn in (("gradcheck", torch.autograd.gradcheck),
                     ("gradgradcheck", torch.autograd.gradgradcheck)):
        try:
            ok, detail = bool(fn(case.ours, (x,))), ""
        except Exception as e:  # noqa: BLE001 - a failed check is a result, not a crash
            ok, detail = False, str(e).splitlines()[0]
        out.append(CheckResult(case.label, device, "float64", test, ok, detail=detail))
    t = torch.randn_like(x)
    _, j_ours = torch.func.jvp(case.ours, (x.detach(),), (t,))
    _, j_ref = torch.func.jvp(case.theirs, (x.detach(),), (t,))
    err = (j_ours - j_ref).abs().max().item()
    out.append(CheckResult(case.label, device, "float64", "jvp", err <= 1e-10, err))
    return out


def run_checks(cases: Iterable[CheckCase] | None = None, device_list=None, dtypes=DTYPES):
    results = []
    for case in cases if cases is not None else all_cases():
        for device in device_list or devices():
            for dtype in dtypes:
                results.append(_parity(case, device, dtype))
            results.extend(_autograd(case, device))
    return results


def format_results(results: list[CheckResult]) -> str:
    lines = [f"{'op':<34} {'device':<6} {'dtype':<9} {'test':<15} {'result':<6} max err"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(f"{r.op:<34} {r.device:<6} {r.dtype:<9} {r.test:<15} "
                     f"{'pass' if r.ok else 'FAIL':<6} {r.max_err:.2e} {r.detail}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def main(args=None) -> int:
    results = run_checks()
    print(format_results(results))
    return 1 if any(not r.ok for r in results) else 0
