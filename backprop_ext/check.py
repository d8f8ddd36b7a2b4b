"""`python -m backprop_ext check`: every op, every device and dtype, against torch.

For each op: parity of forward and backward against torch's own op on a float64 reference
(testing.compare's rule) in every dtype, and in float64 gradcheck, gradgradcheck and forward-mode
AD against torch.func.jvp of torch's op. Prints op x device x dtype -> pass/fail and max error.
"""

from __future__ import annotations

import dataclasses
import functools
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


def _softmax_checks() -> list[CheckCase]:
    import torch.nn.functional as TF

    from . import functional as BF

    def rows(device, dtype):
        return (torch.randn(6, 37, dtype=torch.float64) * 3).to(device=device, dtype=dtype)

    target = torch.tensor([0, 5, -100, 36, 2, 11])
    weight = torch.rand(37, dtype=torch.float64) + 0.5

    def ce(F, **kw):
        def fn(x):
            w = weight.to(device=x.device, dtype=x.dtype)
            return F.cross_entropy(x, target.to(x.device), weight=w, **kw)
        return fn

    return [
        CheckCase("softmax(dim=-1)", lambda x: BF.softmax(x, -1), lambda x: TF.softmax(x, -1), rows),
        CheckCase("softmax(dim=0)", lambda x: BF.softmax(x, 0), lambda x: TF.softmax(x, 0), rows),
        CheckCase("log_softmax(dim=-1)", lambda x: BF.log_softmax(x, -1),
                  lambda x: TF.log_softmax(x, -1), rows),
        CheckCase("logsumexp(dim=-1)", lambda x: BF.logsumexp(x, -1),
                  lambda x: torch.logsumexp(x, -1), rows),
        CheckCase("logsumexp(dim=(0,1))", lambda x: BF.logsumexp(x, (0, 1)),
                  lambda x: torch.logsumexp(x, (0, 1)), rows),
        CheckCase("cross_entropy(weight,ignore)", ce(BF), ce(TF), rows),
        CheckCase("cross_entropy(smoothing=0.1,none)", ce(BF, label_smoothing=0.1, reduction="none"),
                  ce(TF, label_smoothing=0.1, reduction="none"), rows),
    ]


def _checkpoint_checks() -> list[CheckCase]:
    """A small MLP (GEMMs and our activations) under each checkpoint policy against the same MLP
    run plainly."""
    from . import functional as BF
    from .checkpoint import checkpoint

    g = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(1, 8, generator=g, dtype=torch.float64), torch.randn(
        8, generator=g, dtype=torch.float64)

    def mlp(x):
        a, b = w1.to(x.device, x.dtype), w2.to(x.device, x.dtype)
        return BF.silu(BF.gelu(x[:, None] @ a)) @ b

    def make(device, dtype):
        return torch.randn(257, dtype=torch.float64).to(device=device, dtype=dtype)

    return [CheckCase(f"checkpoint({policy}) MLP",
                      functools.partial(checkpoint, mlp, policy=policy), mlp, make)
            for policy in ("full", "selective", "full+selective")]


def _clip_checks(device: str, dtypes) -> list[CheckResult]:
    """clip_grad_norm_ (every norm order) and clip_grad_value_ against torch.nn.utils' on the
    same gradients, by the float64-reference rule: returned norm and clipped gradients."""
    from . import utils as BU

    results = []
    sizes = (1, 7, 1023, 70_001)
    for dtype in dtypes:
        for p in (2.0, float("inf"), 1.0, 0.5, 3.0):
            scale = 1e-3 if dtype == torch.float16 else 1.0  # keep torch's float16 norms finite
            grads = [torch.randn(n, dtype=torch.float64) * scale for n in sizes]
            if dtype == torch.float16 and p < 1:
                grads = grads[:3]
            sets = []
            for d in (dtype, dtype, torch.float64):
                params = [torch.nn.Parameter(torch.empty(g.shape, dtype=d, device=device))
                          for g in grads]
                for q, g in zip(params, grads):
                    q.grad = g.to(device=device, dtype=d).clone()  # each set its own copy
                sets.append(params)
            ours, theirs, ref = sets
            ref_norm = torch.nn.utils.get_total_norm([q.grad for q in ref], p)
            max_norm = 0.5 * ref_norm.item()  # clipping happens
            torch.nn.utils.clip_grad_norm_(ref, max_norm, p)
            norms = compare(BU.clip_grad_norm_(ours, max_norm, p),
                            torch.nn.utils.clip_grad_norm_(theirs, max_norm, p), ref_norm)
            grad_results = [compare(a.grad, b.grad, r.grad) for a, b, r in zip(ours, theirs, ref)]
            worst = max(grad_results, key=lambda c: c.max_err)
            ok = norms.ok and all(c.ok for c in grad_results)
            results.append(CheckResult(f"clip_grad_norm_(norm_type={p:g})", device,
                                       str(dtype).removeprefix("torch."), "parity norm+grads",
                                       ok, max(norms.max_err, worst.max_err),
                                       norms.message or worst.message))
        grads = [torch.randn(n, dtype=torch.float64).to(device=device, dtype=dtype)
                 for n in sizes]
        pairs = []
        for fn in (BU.clip_grad_value_, torch.nn.utils.clip_grad_value_):
            params = [torch.nn.Parameter(torch.empty_like(g)) for g in grads]
            for q, g in zip(params, grads):
                q.grad = g.clone()
            fn(params, 0.5)
            pairs.append(params)
        ok = all(torch.equal(a.grad, b.grad) for a, b in zip(*pairs))
        results.append(CheckResult("clip_grad_value_", device, str(dtype).removeprefix("torch."),
                                   "bitwise torch", ok))
    return results


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
    return _activation_checks() + _linear_checks() + _softmax_checks() + _checkpoint_checks()


def _parity(case: CheckCase, device: str, dtype: torch.dtype) -> CheckResult:
    x = case.make(device, dtype)
    xo, xt, xr = (x.detach().requires_grad_(), x.detach().requires_grad_(),
                  x.detach().double().requires_grad_())
    yo, yt, yr = case.ours(xo), case.theirs(xt), case.theirs(xr)
    g = torch.randn(yr.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    fwd = compare(yo, yt, yr)
    g = torch.randn(yr.shape, dtype=torch.float64).to(device=device, dtype=yo.dtype)
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
    try:
        _, j_ours = torch.func.jvp(case.ours, (x.detach(),), (t,))
        _, j_ref = torch.func.jvp(case.theirs, (x.detach(),), (t,))
        err = (j_ours - j_ref).abs().max().item()
        out.append(CheckResult(case.label, device, "float64", "jvp", err <= 1e-10, err))
    except Exception as e:  # noqa: BLE001 - as above
        out.append(CheckResult(case.label, device, "float64", "jvp", False,
                               detail=f"{type(e).__name__}: {str(e).splitlines()[0]}"))
    return out


def run_checks(cases: Iterable[CheckCase] | None = None, device_list=None, dtypes=DTYPES):
    results = []
    for case in cases if cases is not None else all_cases():
        for device in device_list or devices():
            for dtype in dtypes:
                try:
                    results.append(_parity(case, device, dtype))
                except Exception as e:  # noqa: BLE001 - a failed check is a result, not a crash
                    results.append(CheckResult(case.label, device,
                                               str(dtype).removeprefix("torch."), "parity fwd+bwd",
                                               False, detail=f"{type(e).__name__}: "
                                               f"{str(e).splitlines()[0]}"))
            results.extend(_autograd(case, device))
    if cases is None:
        for device in device_list or devices():
            results.extend(_clip_checks(device, dtypes))
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
