"""`python -m backprop_ext check`: every op, every device and dtype, against torch.

The cases are backprop_ext.testing's tables (the ones the test suite runs). For each: parity of
forward and backward against torch's own op on a float64 reference (testing.compare's rule) in
every dtype, and in float64 gradcheck, gradgradcheck and forward-mode AD against torch.func.jvp
of torch's op; clipping against torch.nn.utils; each checkpoint policy against the plain block.
Prints op x device x dtype -> pass/fail and max error; a check that raises is a failed row.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable

import torch

from . import testing
from .testing import DTYPES, devices, dtype_name


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
    """An op as our function and torch's, and a maker of its differentiable inputs: the shape of
    backprop_ext.testing's cases."""

    label: str
    ours: Callable
    torch: Callable
    make: Callable


def _checkpoint_cases() -> list[CheckCase]:
    """A small MLP (GEMMs and our activations) under each checkpoint policy against the same MLP
    run plainly."""
    from . import functional as BF
    from .checkpoint import checkpoint

    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(1, 8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, generator=g, dtype=torch.float64)

    def mlp(x):
        a, b = w1.to(x.device, x.dtype), w2.to(x.device, x.dtype)
        return BF.silu(BF.gelu(x[:, None] @ a)) @ b

    def make(device, dtype, small=False):
        return (torch.randn(16 if small else 257, dtype=torch.float64).to(device, dtype),)

    return [CheckCase(f"checkpoint({policy}) MLP",
                      functools.partial(checkpoint, mlp, policy=policy), mlp, make)
            for policy in ("full", "selective", "full+selective")]


def all_cases() -> list:
    return list(testing.CASES) + _checkpoint_cases()


def _row(case, device, dtype, test, results) -> CheckResult:
    """One row from parity-style results [(what, Comparison)]."""
    bad = [f"{what}: {c.message}" for what, c in results if not c.ok]
    err = max((c.max_err for _, c in results), default=0.0)
    return CheckResult(case, device, dtype_name(dtype), test, not bad, err, "; ".join(bad))


def _failed(case, device, dtype, test, error: Exception) -> CheckResult:
    return CheckResult(case, device, dtype_name(dtype), test, False,
                       detail=f"{type(error).__name__}: {str(error).splitlines()[0]}")


def _parity(case, device: str, dtype: torch.dtype) -> CheckResult:
    try:
        results = testing.parity(case.ours, case.torch, case.make(device, dtype))
    except Exception as e:
        return _failed(case.label, device, dtype, "parity fwd+bwd", e)
    return _row(case.label, device, dtype, "parity fwd+bwd", results)


def _load_jvp_decompositions() -> None:
    """Imports what torch loads on the first forward-mode AD call (make_dual), its decompositions
    for jvp, silencing the one warning that import raises (torch >= 2.14 deprecates the
    torch.jit.script it calls): torch's, not ours, and not the user's to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                                category=FutureWarning)
        from torch._decomp import decompositions_for_jvp  # noqa: F401


def _autograd(case, device: str) -> list[CheckResult]:
    _load_jvp_decompositions()
    out = []
    inputs = [t.requires_grad_() for t in case.make(device, torch.float64, small=True)]
    for test, fn in (("gradcheck", torch.autograd.gradcheck),
                     ("gradgradcheck", torch.autograd.gradgradcheck)):
        try:
            ok, detail = bool(fn(case.ours, tuple(inputs))), ""
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0]}"
        out.append(CheckResult(case.label, device, "float64", test, ok, detail=detail))
    try:
        primals = tuple(t.detach() for t in inputs)
        tangents = tuple(torch.randn_like(t) for t in primals)
        _, j_ours = torch.func.jvp(case.ours, primals, tangents)
        _, j_ref = torch.func.jvp(case.torch, primals, tangents)
        err = (j_ours - j_ref).abs().max().item() if j_ref.numel() else 0.0
        out.append(CheckResult(case.label, device, "float64", "jvp", err <= 1e-10, err))
    except Exception as e:
        out.append(_failed(case.label, device, torch.float64, "jvp", e))
    return out


def _clip_checks(device: str, dtypes) -> list[CheckResult]:
    results = []
    for dtype in dtypes:
        for p in testing.CLIP_NORM_TYPES:
            label = f"clip_grad_norm_(norm_type={p:g})"
            try:
                results.append(_row(label, device, dtype, "parity norm+grads",
                                    testing.clip_parity(device, dtype, p)))
            except Exception as e:
                results.append(_failed(label, device, dtype, "parity norm+grads", e))
        try:
            ok = testing.clip_value_matches(device, dtype)
            results.append(CheckResult("clip_grad_value_", device, dtype_name(dtype),
                                       "bitwise torch", ok))
        except Exception as e:
            results.append(_failed("clip_grad_value_", device, dtype, "bitwise torch", e))
    return results


def run_checks(cases: Iterable | None = None, device_list=None, dtypes=DTYPES):
    results = []
    for case in cases if cases is not None else all_cases():
        for device in device_list or devices():
            for dtype in dtypes:
                results.append(_parity(case, device, dtype))
            results.extend(_autograd(case, device))
    if cases is None:
        for device in device_list or devices():
            results.extend(_clip_checks(device, dtypes))
    return results


def format_results(results: list[CheckResult]) -> str:
    lines = [f"{'op':<38} {'device':<6} {'dtype':<9} {'test':<17} {'result':<6} max err"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(f"{r.op:<38} {r.device:<6} {r.dtype:<9} {r.test:<17} "
                     f"{'pass' if r.ok else 'FAIL':<6} {r.max_err:.2e} {r.detail}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)


def _family(op: str) -> str:
    """The family of a case label: "activations" for every activation row, "linear (+ each
    activation)", else the label up to its arguments ("softmax", "cross_entropy", ...)."""
    from .ops.activation import ACTIVATIONS

    base = op.split("(")[0]
    if base in ACTIVATIONS:
        return "activations"
    if base == "linear" or base.startswith("linear+"):
        return "linear (+ each activation)"
    return base


def format_summary(results: list[CheckResult]) -> str:
    """One line per family with its number of cases and the checks they passed (and the dtypes
    of the parity checks), then every failure in full, then the count."""
    by_op: dict[str, list[CheckResult]] = {}
    cases: dict[str, set] = {}
    for r in results:
        by_op.setdefault(_family(r.op), []).append(r)
        cases.setdefault(_family(r.op), set()).add(r.op)
    width = max((len(op) for op in by_op), default=2) + 2
    lines = []
    for op, rows in by_op.items():
        passed: dict[str, list[str]] = {}
        for r in rows:
            if r.ok:
                passed.setdefault(r.test, []).append(r.dtype)
        tests = [t if t != "parity fwd+bwd" else f"parity ({', '.join(dict.fromkeys(d))})"
                 for t, d in passed.items()]
        failed = sum(not r.ok for r in rows)
        status = "ok  " if not failed else f"FAIL ({failed})"
        n = len(cases[op])
        lines.append(f"{op:<{width}}{n:>3} case{'s' if n > 1 else ' '}  {status:<10}"
                     f"{', '.join(tests) or '-'}")
    failures = [r for r in results if not r.ok]
    if failures:
        lines.append("\nfailures:")
        lines += [f"  {r.op} {r.device} {r.dtype} {r.test}: max err {r.max_err:.2e} {r.detail}"
                  for r in failures]
    lines.append(f"{len(results) - len(failures)} passed, {len(failures)} failed")
    return "\n".join(lines)


def main(args=None) -> int:
    results = run_checks()
    print(format_results(results))
    return 1 if any(not r.ok for r in results) else 0
