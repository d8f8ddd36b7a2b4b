"""Gradient clipping (backprop_ext.utils) against torch.nn.utils, the multi-tensor ops under it,
and the gradient-flow report."""

import itertools
import math
import warnings

import pytest
import torch

import backprop_ext.utils as BU
from backprop_ext.testing import assert_matches

ops = torch.ops.backprop_ext
INF = float("inf")
NORM_TYPES = [2.0, INF, 1.0, 0.5, 3.0]
DTYPE_MIXES = {
    "float64": [torch.float64],
    "float32": [torch.float32],
    "float16": [torch.float16],
    "bfloat16": [torch.bfloat16],
    "mixed": [torch.float32, torch.float16, torch.bfloat16, torch.float64],
    "half_mixed": [torch.float16, torch.bfloat16],
}


def _grad_shapes():
    """Shapes that matter: 0-d, one element, odd sizes, one past a chunk (65536), non-dense."""
    return [(), (1,), (7,), (1023,), (4097,), (65537,), (3, 5), "transposed", "strided", (0,)]


def _make_params(device, dtypes, scale=3.0, skip_empty=False, max_numel=None):
    """Parameters whose grads cycle through `dtypes` and the shapes above; one has no grad."""
    params = []
    for i, shape in enumerate(_grad_shapes()):
        if skip_empty and shape == (0,):
            continue
        if max_numel is not None and isinstance(shape, tuple) and math.prod(shape) > max_numel:
            continue
        dtype = dtypes[i % len(dtypes)]
        if shape == "transposed":
            g = torch.randn(9, 6, dtype=torch.float64).t()
        elif shape == "strided":
            g = torch.randn(12, 5, dtype=torch.float64)[::3]
        else:
            g = torch.randn(shape, dtype=torch.float64)
        g = (g * scale).to(device=device, dtype=dtype)
        p = torch.nn.Parameter(torch.randn(g.shape, dtype=dtype, device=device))
        p.grad = g  # keeps g's layout: the non-dense cases stay non-dense
        params.append(p)
    no_grad = torch.nn.Parameter(torch.randn(3, device=device))
    params.insert(2, no_grad)
    return params


def _same_layout(t, dtype=None):
    """A copy of t with t's strides, dense or not (clone() would compact a non-dense view)."""
    out = torch.empty_strided(t.size(), t.stride(), dtype=dtype or t.dtype, device=t.device)
    return out.copy_(t)


def _clone(params, dtype=None):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone().to(dtype or p.dtype))
        if p.grad is not None:
            q.grad = _same_layout(p.grad, dtype)
        out.append(q)
    return out


def _assert_grads_match(ours, theirs, ref):
    for a, b, r in zip(ours, theirs, ref):
        if a.grad is None:
            assert b.grad is None and r.grad is None
            continue
        assert a.grad.stride() == b.grad.stride()  # written in place, layout kept
        assert_matches(a.grad, b.grad, r.grad)


# --- clip_grad_norm_ / get_total_norm / clip_grads_with_norm_ against torch


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("mix", DTYPE_MIXES, ids=str)
def test_clip_grad_norm_matches_torch(norm_type, mix, device):
    # torch refuses the inf norm of an empty tensor; ours counts it as 0 (see the next test).
    # torch computes each float16 tensor's norm in float16: keep those below 65504, or torch's
    # result is inf and no yardstick (p < 1 norms grow like numel^(1/p)).
    scale, max_numel = 3.0, None
    if torch.float16 in DTYPE_MIXES[mix]:
        scale, max_numel = (1e-3, 1023) if norm_type < 1 else (0.05, None)
    params = _make_params(device, DTYPE_MIXES[mix], scale, math.isinf(norm_type), max_numel)
    theirs, ref = _clone(params), _clone(params, torch.float64)
    ref_norm = torch.nn.utils.get_total_norm([p.grad for p in ref if p.grad is not None],
                                             norm_type)
    max_norm = 0.3 * ref_norm.item()  # clipping happens

    total_ours = BU.clip_grad_norm_(params, max_norm, norm_type)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    torch.nn.utils.clip_grad_norm_(ref, max_norm, norm_type)
    assert total_ours.dtype == total_theirs.dtype and total_ours.device == total_theirs.device
    assert total_ours.shape == ()
    assert_matches(total_ours, total_theirs, ref_norm)
    _assert_grads_match(params, theirs, ref)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=lambda p: f"p{p:g}")
def test_get_total_norm_matches_torch_and_reference(norm_type, device):
    tensors = [torch.randn(s, device=device) * 2 for s in [(5, 7), (1,), (70000,), ()]]
    ref = torch.linalg.vector_norm(torch.cat([t.double().flatten() for t in tensors]), norm_type)
    ours, theirs = BU.get_total_norm(tensors, norm_type), torch.nn.utils.get_total_norm(
        tensors, norm_type)
    assert ours.dtype == theirs.dtype == torch.float32 and ours.device == theirs.device
    assert_matches(ours, theirs, ref)
    # A single tensor, as torch accepts; empty tensors count as zero elements.
    torch.testing.assert_close(BU.get_total_norm(tensors[0], norm_type),
                               torch.nn.utils.get_total_norm(tensors[0], norm_type))
    with_empty = BU.get_total_norm(tensors + [torch.empty(0, device=device)], norm_type)
    assert torch.equal(with_empty, ours)


def test_no_clipping_below_max_norm(device):
    params = _make_params(device, [torch.float32])
    before = [p.grad.clone() if p.grad is not None else None for p in params]
    total = BU.clip_grad_norm_(params, 1e9)
    # The coefficient clamps to exactly 1: the gradients are untouched, bit for bit.
    for p, b in zip(params, before):
        assert (p.grad is None and b is None) or torch.equal(p.grad, b)
    assert total > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float64], ids=str)
def test_clip_grads_with_norm_is_bitwise_torch(dtype, norm_dtype, device):
    # Given the same norm tensor, the coefficient is computed in torch's order and precision, and
    # each element is scaled as torch._foreach_mul_ does: the results are identical.
    params = _make_params(device, [dtype])
    theirs = _clone(params)
    total = torch.tensor(12.345, dtype=norm_dtype, device=device)
    BU.clip_grads_with_norm_(params, 1.5, total)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.5, total)
    for a, b in zip(params, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), (a.grad - b.grad).abs().max()
    # A plain number works too, as a float32 norm.
    BU.clip_grads_with_norm_(params, 1.5, 12.345)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.5, torch.tensor(12.345, device=device))
    for a, b in zip(params, theirs):
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_foreach_values_are_accepted_and_agree(foreach, device):
    params = _make_params(device, [torch.float32, torch.bfloat16])
    theirs, ref = _clone(params), _clone(params, torch.float64)
    # torch has no foreach kernels on CPU and refuses foreach=True there; ours are fused on both.
    torch_foreach = None if (foreach and device == "cpu") else foreach
    total = BU.clip_grad_norm_(params, 2.0, foreach=foreach)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, 2.0, foreach=torch_foreach)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 2.0)
    assert_matches(total, total_theirs, ref_total)
    _assert_grads_match(params, theirs, ref)
    BU.clip_grad_value_(params, 0.005, foreach=foreach)
    torch.nn.utils.clip_grad_value_(theirs, 0.005, foreach=torch_foreach)
    torch.nn.utils.clip_grad_value_(ref, 0.005)
    _assert_grads_match(params, theirs, ref)


def test_many_tensors_mixed_dtypes(device):
    # More tensors than one CUDA launch packs (128), sizes around the chunk size.
    torch.manual_seed(1)
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    sizes = torch.randint(1, 3000, (300,)).tolist()
    sizes[7], sizes[150], sizes[299] = 65536, 65537, 3 * 65536 + 5  # whole and partial chunks
    grads = [torch.randn(n, device=device, dtype=dtypes[i % 3]) for i, n in enumerate(sizes)]
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.empty_like(g))
        p.grad = g
        params.append(p)
    theirs, ref = _clone(params), _clone(params, torch.float64)
    for p_ in (2.0, INF):
        n_ours = BU.get_total_norm([p.grad for p in params], p_)
        n_ref = torch.nn.utils.get_total_norm([p.grad for p in ref], p_)
        n_theirs = torch.nn.utils.get_total_norm([p.grad for p in theirs], p_)
        assert_matches(n_ours, n_theirs, n_ref)
        per = ops.multi_tensor_norm_per_tensor([p.grad for p in params], p_)
        per_ref = torch.stack([torch.linalg.vector_norm(p.grad, p_) for p in ref])
        torch.testing.assert_close(per.double(), per_ref, rtol=1e-5, atol=0)
    BU.clip_grad_norm_(params, 1.0)
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.nn.utils.clip_grad_norm_(ref, 1.0)
    _assert_grads_match(params, theirs, ref)


def test_half_precision_norm_is_accumulated_in_float32(device):
    # 70000 float16 values of 1: the float32 sum of squares is exact, and the norm is
    # sqrt(70000) = 264.575... rounded once to float16.
    g = torch.ones(70000, dtype=torch.float16, device=device)
    ours = BU.get_total_norm([g])
    assert ours.dtype == torch.float16
    assert ours.item() == torch.tensor(math.sqrt(70000), dtype=torch.float16).item()
    # Where the float16 norm overflows, torch zeroes the gradients; ours still clips them to
    # max_norm, from the float32 norm (while the float16 return value is inf, like torch's).
    p = torch.nn.Parameter(torch.empty(70000, dtype=torch.float16, device=device))
    p.grad = torch.full((70000,), 300.0, dtype=torch.float16, device=device)
    total = BU.clip_grad_norm_([p], 1.0)
    assert total.isinf()
    expected = 300.0 / (300.0 * math.sqrt(70000))
    torch.testing.assert_close(p.grad.float(), torch.full_like(p.grad, expected).float(),
                               rtol=2e-3, atol=0)


def test_parameters_forms(device):
    p = torch.nn.Parameter(torch.randn(4, device=device))
    p.grad = torch.ones(4, device=device) * 4
    q = torch.nn.Parameter(torch.randn(5, device=device))  # no grad: skipped
    total = BU.clip_grad_norm_(p, 1.0)  # a single tensor
    torch.testing.assert_close(total, torch.tensor(8.0, device=device))
    torch.testing.assert_close(p.grad.norm(), torch.tensor(1.0, device=device), rtol=1e-5, atol=0)
    total = BU.clip_grad_norm_((x for x in [p, q]), 0.5)  # a generator, read once
    torch.testing.assert_close(total, torch.tensor(1.0, device=device), rtol=1e-5, atol=0)
    assert q.grad is None
    # No gradients at all: torch's tensor(0.), and a warning for an empty generator.
    assert torch.equal(BU.clip_grad_norm_([q], 1.0), torch.tensor(0.0))
    with pytest.warns(UserWarning, match="empty generator"):
        BU.clip_grad_norm_((x for x in []), 1.0)
    assert torch.equal(BU.get_total_norm([]), torch.tensor(0.0))
    BU.clip_grad_value_([q], 1.0)
    BU.clip_grads_with_norm_([q], 1.0, torch.tensor(3.0))


def test_gradients_our_kernels_cannot_take_go_through_torch(device):
    # Complex gradients (our kernels are real-only) mixed with real ones: torch's path for them,
    # the results combined as torch combines per-device norms.
    params = _make_params(device, [torch.float32])
    z = torch.nn.Parameter(torch.randn(6, dtype=torch.complex64, device=device))
    z.grad = torch.randn(6, dtype=torch.complex64, device=device)
    params.append(z)
    theirs = _clone(params)
    total = BU.clip_grad_norm_(params, 1.0)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    torch.testing.assert_close(total, total_theirs)
    for a, b in zip(params, theirs):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.cuda
def test_gradients_on_two_devices():
    params = _make_params("cuda", [torch.float32]) + _make_params("cpu", [torch.bfloat16])
    theirs, ref = _clone(params), _clone(params, torch.float64)
    total = BU.clip_grad_norm_(params, 1.0)
    total_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    assert total.device == total_theirs.device == torch.device("cuda", 0)
    assert_matches(total, total_theirs, ref_total)
    _assert_grads_match(params, theirs, ref)


def test_nonfinite_norms_behave_like_torch(device):
    for bad in (float("nan"), INF):
        params = _make_params(device, [torch.float32])
        params[0].grad[()] = bad
        theirs = _clone(params)
        with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
            BU.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
        with pytest.raises(RuntimeError, match="is non-finite"):
            BU.get_total_norm([p.grad for p in params if p.grad is not None],
                              error_if_nonfinite=True)
        total = BU.clip_grad_norm_(params, 1.0)
        total_theirs = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
        torch.testing.assert_close(total, total_theirs, equal_nan=True)
        for a, b in zip(params, theirs):
            if a.grad is not None:  # NaN norm: NaN grads; inf norm: coefficient 0
                torch.testing.assert_close(a.grad, b.grad, equal_nan=True, rtol=0, atol=0)


# --- extreme values: the norm overflows or underflows only where its true value does


def _exact_norm(tensors, p):
    """||tensors||_p in float64 without overflow or underflow: max |x| times the (math.fsum) sum
    of (|x| / max)^p, rooted; a few float64 ulps from the exact value."""
    a = torch.cat([t.detach().double().flatten().cpu() for t in tensors]).abs()
    if a.isnan().any():
        return math.nan
    m = a.max().item() if a.numel() else 0.0
    if math.isinf(p) or m == 0 or math.isinf(m):
        return m
    return m * math.fsum((a / m).pow(p).tolist()) ** (1 / p)


def _assert_exact_norm(got, tensors, p, rtol, name=""):
    want = _exact_norm(tensors, p)
    want = torch.tensor(want, dtype=torch.float64).to(got.dtype).item()  # rounded like ours
    got = got.item()
    if math.isnan(want) or math.isinf(want) or want == 0:
        assert got == want or (math.isnan(got) and math.isnan(want)), (name, got, want)
    else:
        assert abs(got - want) <= rtol * want, (name, got, want, abs(got - want) / want)


EXTREME_P = [2.0, 1.0, 3.0, 0.5, 1.5, 10.0, INF]
# float32 sums of 2^16 terms in float lanes, float64 sums against the float64 reference.
_RTOL = {torch.float64: 1e-13, torch.float32: 2e-5}


@pytest.mark.parametrize("p", EXTREME_P, ids=lambda p: f"p{p:g}")
@pytest.mark.parametrize("dtype,value", [(torch.float32, 3e34), (torch.float64, 1e300),
                                         (torch.float32, -1e-30), (torch.float32, 1e-40),
                                         (torch.float64, 1e-200), (torch.float64, -1e-310)],
                         ids=lambda v: str(v).removeprefix("torch."))
def test_one_element_norm_is_exact_and_clips_to_max_norm(p, dtype, value, device):
    # One element's norm is its magnitude for every p, as torch computes it, however large or
    # small; clipping then scales it to max_norm instead of zeroing it (huge) or leaving it.
    g = torch.full((1,), value, dtype=dtype, device=device)
    ours, theirs = BU.get_total_norm([g], p), torch.nn.utils.get_total_norm([g], p)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs, rtol=_RTOL[dtype], atol=0)
    assert ours.item() == pytest.approx(abs(value), rel=_RTOL[dtype])
    param = torch.nn.Parameter(torch.zeros(1, dtype=dtype, device=device))
    param.grad = g.clone()
    total = BU.clip_grad_norm_([param], 0.5, p)
    torch.testing.assert_close(total, ours, rtol=0, atol=0)
    expected = min(1.0, 0.5 / (abs(value) + 1e-6)) * value
    torch.testing.assert_close(param.grad.double().item(), expected, rtol=2 * _RTOL[dtype], atol=0)


def test_norm_overflowing_its_dtype_is_inf_like_torch(device):
    # The L1 norm of 200 x 3e36 is 6e38 > float32's max: inf, not an error.
    g = torch.full((200,), 3e36, device=device)
    for p in (1.0, 0.5):
        assert BU.get_total_norm([g], p).isinf()
        assert torch.nn.utils.get_total_norm([g], p).isinf()
    param = torch.nn.Parameter(torch.zeros_like(g))
    param.grad = g.clone()
    assert BU.clip_grad_norm_([param], 1.0, 1.0).isinf()
    assert not param.grad.any()  # coefficient 1 / inf = 0, as in torch
    per = ops.multi_tensor_norm_per_tensor([g, g[:3]], 1.0)
    assert per[0].isinf() and per[1].item() == pytest.approx(9e36, rel=1e-6)
    # Its L2 norm, 3e36 * sqrt(200), is finite although the squares are not.
    _assert_exact_norm(BU.get_total_norm([g]), [g], 2.0, _RTOL[torch.float32])


def _extreme_sets(device):
    """(name, tensors) whose sum of |x|^p leaves the accumulation range while the norm need not:
    huge and tiny values over several chunks, beside ordinary, zero, NaN and inf chunks. Long
    runs are random, not constant: a float32 sum of 2^10 equal terms per lane is itself off by
    up to ~3e-5, which is not what these cases test."""
    f32, f64 = torch.float32, torch.float64

    def full(n, v, dtype=f32):
        return torch.full((n,), v, dtype=dtype, device=device)

    def randn(n, scale, dtype=f32):
        return (torch.randn(n, dtype=f64, device=device) * scale).to(dtype)

    return [
        ("huge-chunks", [randn(70_000, 1e20), randn(65_536 * 2 + 3, 1e19)]),
        ("huge-beside-ordinary", [randn(1000, 1.0), full(5, -2e37), randn(70_000, 3.0)]),
        ("tiny-chunks", [randn(70_000, 1e-30), full(3, 1e-42)]),
        ("tiny-beside-zeros", [torch.zeros(70_000, device=device), full(2, 1e-41)]),
        ("zeros", [torch.zeros(70_000, device=device), torch.zeros(3, device=device)]),
        ("huge-and-tiny", [full(3, 1e30), randn(65_536, 1e-30), randn(10, 1.0)]),
        ("float64-huge", [randn(70_000, 1e300, f64), full(2, -1e-300, f64)]),
        ("float64-tiny", [randn(70_000, 1e-300, f64), full(2, 5e-324, f64)]),
        # A float64 result: float32 partials may leave float32's range (the L1 sums do).
        ("mixed-dtypes", [randn(70_000, 1e36), randn(5, 1.0, f64)]),
        ("half-huge", [full(4, 1e38, torch.bfloat16), full(9, 6e4, torch.float16)]),
        ("inf-beside-huge", [randn(70_000, 1e30), full(1, -INF), full(3, 1e-40)]),
        ("nan-beside-huge", [full(70_000, 1e30), full(1, math.nan), full(7, INF)]),
        ("nan-beside-tiny", [full(70_000, 1e-30), torch.tensor([1.0, math.nan], device=device)]),
    ]


@pytest.mark.parametrize("p", EXTREME_P, ids=lambda p: f"p{p:g}")
def test_norms_of_extreme_values_are_exact(p, device):
    for name, tensors in _extreme_sets(device):
        # Accumulated in float32 lanes unless every tensor is float64.
        rtol = _RTOL[torch.float64 if all(t.dtype == torch.float64 for t in tensors)
                     else torch.float32]
        _assert_exact_norm(ops.multi_tensor_norm(tensors, p), tensors, p, rtol, name)
        per = ops.multi_tensor_norm_per_tensor(tensors, p)
        for i, t in enumerate(tensors):
            _assert_exact_norm(per[i], [t], p, _RTOL[torch.float64 if t.dtype == torch.float64
                                                      else torch.float32], f"{name}[{i}]")


@pytest.mark.parametrize("foreach", [None, False])
def test_norms_combine_without_overflow_on_every_path(foreach, device):
    # foreach=False takes one norm per tensor and then the norm of those; that one must not
    # overflow either (torch's: sqrt(2 * (3e34)^2) is inf in float32).
    grads = [torch.full((1,), 3e34, device=device), torch.full((3,), -3e34, device=device)]
    total = BU.get_total_norm(grads, 2.0, foreach=foreach)
    assert total.dtype == torch.float32 and total.item() == pytest.approx(6e34, rel=1e-6)
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for param, g in zip(params, grads):
        param.grad = g.clone()
    BU.clip_grad_norm_(params, 1.0, foreach=foreach)
    clipped = torch.cat([param.grad for param in params])
    torch.testing.assert_close(clipped, torch.tensor([0.5, -0.5, -0.5, -0.5], device=device))


def test_large_order_norm_of_values_below_one(device):
    # 0.1^100 underflows float32 and float64 alike; the norm is still 0.1 * n^(1/100).
    for dtype in (torch.float32, torch.float64):
        g = torch.full((70_000,), 0.1, dtype=dtype, device=device)
        _assert_exact_norm(ops.multi_tensor_norm([g], 100.0), [g], 100.0, _RTOL[dtype])


def test_clip_grad_norm_of_huge_gradients_matches_float64(device):
    # float32 gradients whose squares overflow float32: clipped as the float64 computation
    # clips them (torch's float32 path agrees here only where its own norm stays finite).
    params = []
    for n, scale in ((70_000, 1e25), (10, 3e37), (1000, 1.0)):
        p = torch.nn.Parameter(torch.zeros(n, device=device))
        p.grad = torch.randn(n, device=device) * scale
        params.append(p)
    ref = _clone(params, torch.float64)
    total = BU.clip_grad_norm_(params, 2.0)
    ref_total = torch.nn.utils.clip_grad_norm_(ref, 2.0)
    torch.testing.assert_close(total.double(), ref_total, rtol=3e-6, atol=0)
    for a, r in zip(params, ref):
        torch.testing.assert_close(a.grad.double(), r.grad, rtol=1e-5, atol=1e-30)


# --- clip_grad_value_


@pytest.mark.parametrize("mix", DTYPE_MIXES, ids=str)
def test_clip_grad_value_is_bitwise_torch(mix, device):
    params = _make_params(device, DTYPE_MIXES[mix])
    params[1].grad[0] = float("nan")
    params[3].grad[-1] = -INF
    theirs = _clone(params)
    BU.clip_grad_value_(params, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for a, b in zip(params, theirs):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, equal_nan=True, rtol=0, atol=0)
            assert a.grad.stride() == b.grad.stride()


# --- bad input


def test_rejects_bad_arguments(device):
    params = _make_params(device, [torch.float32])
    for norm_type in (0, 0.0, -1.0, -INF, float("nan")):
        with pytest.raises(ValueError, match="norm_type must be a positive number or inf"):
            BU.clip_grad_norm_(params, 1.0, norm_type)
        with pytest.raises(ValueError, match="norm_type must be a positive number or inf"):
            BU.get_total_norm([params[0].grad], norm_type)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="max_norm must be >= 0"):
            BU.clip_grad_norm_(params, bad)
        with pytest.raises(ValueError, match="max_norm must be >= 0"):
            BU.clip_grads_with_norm_(params, bad, torch.tensor(1.0))
        with pytest.raises(ValueError, match="clip_value must be >= 0"):
            BU.clip_grad_value_(params, bad)
    # max_norm = 0 is allowed: it zeroes the gradients, as in torch.
    BU.clip_grad_norm_(params, 0.0)
    assert all(p.grad is None or not p.grad.any() for p in params)


def test_ops_reject_bad_input(device):
    x = torch.randn(4, device=device)
    with pytest.raises(RuntimeError, match="expected the norm order p to be a positive number"):
        ops.multi_tensor_norm([x], 0.0)
    with pytest.raises(RuntimeError, match=r"expected tensors\[1\] to be a float64, float32, "
                                           "float16 or bfloat16 tensor, but got Long"):
        ops.multi_tensor_norm([x, torch.ones(3, dtype=torch.long, device=device)], 2.0)
    with pytest.raises(RuntimeError, match="expected lo <= hi"):
        ops.multi_tensor_clamp_([x], 1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"tensors\[0\] has elements that share memory"):
        ops.multi_tensor_clamp_([torch.randn(1, 3, device=device).expand(4, 3)], -1.0, 1.0)
    with pytest.raises(RuntimeError, match="expected total_norm to hold one value"):
        ops.multi_tensor_scale_([x], torch.ones(2, device=device), 1.0)
    with pytest.raises(RuntimeError, match="expected max_norm >= 0"):
        ops.multi_tensor_scale_([x], torch.ones((), device=device), -1.0)


@pytest.mark.cuda
def test_ops_reject_mixed_devices():
    with pytest.raises(RuntimeError, match=r"all tensors must be on one device, the device of "
                                           r"tensors\[0\] \(cuda:0\), but tensors\[1\] is on cpu"):
        ops.multi_tensor_norm([torch.randn(3, device="cuda"), torch.randn(3)], 2.0)
    with pytest.raises(RuntimeError, match="expected total_norm on the tensors' device"):
        ops.multi_tensor_scale_([torch.randn(3, device="cuda")], torch.ones(()), 1.0)


# --- the ops themselves


def _op_inputs(device):
    return [torch.randn(3, 4, device=device), torch.randn(6, 5, device=device).t(),
            torch.randn(10, 3, device=device, dtype=torch.float16)[::2],
            torch.randn(5, device=device, dtype=torch.bfloat16), torch.randn(0, device=device)]


def test_opcheck(device):
    tensors = _op_inputs(device)
    torch.library.opcheck(ops.multi_tensor_norm.default, (tensors, 2.0))
    torch.library.opcheck(ops.multi_tensor_norm.default, (tensors, INF))
    torch.library.opcheck(ops.multi_tensor_norm_per_tensor.default, (tensors, 0.5))
    torch.library.opcheck(ops.multi_tensor_scale_.default,
                          ([t.clone() for t in tensors], torch.tensor(7.0, device=device), 1.0))
    torch.library.opcheck(ops.multi_tensor_clamp_.default,
                          ([t.clone() for t in tensors], -0.5, 0.5))


def test_ops_keep_layout_and_write_back_non_dense(device):
    base = torch.randn(8, 6, device=device)
    view = base[:, ::2]  # not dense: computed on a copy, written back through the view
    expected = base.clone()
    expected[:, ::2] = expected[:, ::2].clamp(-0.3, 0.3)
    ops.multi_tensor_clamp_([view], -0.3, 0.3)
    assert torch.equal(base, expected)
    t = torch.randn(5, 7, device=device).t()  # dense, transposed: updated where it lies
    expected = t * 0.5
    ops.multi_tensor_scale_([t], torch.tensor(2.0 - 1e-6, device=device), 1.0)
    torch.testing.assert_close(t, expected, rtol=1e-6, atol=0)
    assert t.stride() == (1, 7)


def test_norm_does_not_depend_on_thread_count():
    tensors = [torch.randn(n) for n in (300_000, 70_001, 5, 65_536)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [ops.multi_tensor_norm(tensors, p) for p in NORM_TYPES]
        torch.set_num_threads(max(2, threads))
        many = [ops.multi_tensor_norm(tensors, p) for p in NORM_TYPES]
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def test_compile_fullgraph():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    model(torch.randn(4, 8)).pow(2).sum().backward()
    twin = _clone(list(model.parameters()))

    def step(params):
        total = BU.clip_grad_norm_(params, 0.1)
        BU.clip_grad_value_(params, 0.01)
        return total

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    total = compiled(list(model.parameters()))
    total_eager = step(twin)
    torch.testing.assert_close(total, total_eager)
    for a, b in zip(model.parameters(), twin):
        torch.testing.assert_close(a.grad, b.grad)


# --- CUDA only: launch packing, alignment, no host sync


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [1, 3])
def test_cuda_misaligned_tensors(offset):
    base = [torch.randn(70_003, device="cuda", dtype=d)
            for d in (torch.float32, torch.float16, torch.bfloat16)]
    views = [b[offset:] for b in base]  # not 16-byte aligned: the scalar path
    ref = torch.linalg.vector_norm(torch.cat([v.double() for v in views]))
    torch.testing.assert_close(ops.multi_tensor_norm(views, 2.0).double(), ref, rtol=1e-6, atol=0)
    expected = [v.clamp(-0.1, 0.1) for v in views]
    ops.multi_tensor_clamp_(views, -0.1, 0.1)
    for v, e in zip(views, expected):
        assert torch.equal(v, e)


@pytest.mark.cuda
def test_cuda_clipping_does_not_sync():
    params = _make_params("cuda", [torch.float32, torch.bfloat16])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        BU.clip_grad_norm_(params, 1.0)
        BU.clip_grad_value_(params, 0.1)
        BU.get_total_norm([p.grad for p in params if p.grad is not None], INF)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- gradient-flow report


def _chain(widths, gain, act):
    torch.manual_seed(0)
    layers = []
    for a, b in itertools.pairwise(widths):
        lin = torch.nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.mul_(gain)
        layers += [lin, act()]
    return torch.nn.Sequential(*layers[:-1])


def test_gradient_flow_flags_vanishing_network():
    # Sigmoid chain with small weights: each layer multiplies the gradient by <= 0.25 * 0.05,
    # so the first layers' gradients fall below the threshold while the last stays healthy.
    model = _chain([16] * 9, 0.05, torch.nn.Sigmoid)
    model(torch.randn(32, 16)).pow(2).sum().backward()
    report = BU.gradient_flow(model, vanishing_threshold=1e-6)
    assert report.vanishing and not report.exploding and not report.healthy
    assert report.vanishing[0].name == "0.weight"
    assert report.layers[-1].status == "ok"  # the last layer's bias gradient
    text = str(report)
    assert "0.weight" in text and "VANISHING" in text and "vanishing" in text


def test_gradient_flow_flags_exploding_network_and_nonfinite():
    model = _chain([32] * 7, 8.0, torch.nn.Identity)
    model(torch.randn(16, 32)).pow(2).sum().backward()
    report = BU.gradient_flow(model, exploding_threshold=1e3)
    assert report.exploding and not report.vanishing
    assert report.exploding[0].name == "0.weight"
    model[0].weight.grad[0, 0] = float("nan")
    report = BU.gradient_flow(model)
    assert report.layers[0].status == "non-finite" and report.layers[0] in report.exploding
    assert math.isnan(report.total_grad_norm)


def test_gradient_flow_values_and_grouping(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    unused = torch.nn.Linear(3, 3)
    model.add_module("unused", unused)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    model.add_module("frozen", frozen)
    model[2](model[1](model[0](torch.randn(5, 4)))).sum().backward()

    report = BU.gradient_flow(model)
    by_name = {layer.name: layer for layer in report.layers}
    assert list(by_name) == ["0.weight", "0.bias", "2.weight", "2.bias", "unused.weight",
                             "unused.bias"]
    for name, p in model.named_parameters():
        if name in by_name and p.grad is not None:
            torch.testing.assert_close(by_name[name].grad_norm, p.grad.norm().item(), rtol=1e-6,
                                       atol=0)
            torch.testing.assert_close(by_name[name].weight_norm, p.norm().item(), rtol=1e-6,
                                       atol=0)
            assert by_name[name].ratio == pytest.approx(p.grad.norm().item() / p.norm().item())
    assert by_name["unused.weight"].status == "no grad" and len(report.without_grad) == 2
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                           if p.grad is not None])
    assert report.total_grad_norm == pytest.approx(total.item(), rel=1e-6)

    modules = BU.gradient_flow(model, by="module", include_frozen=True)
    names = [layer.name for layer in modules.layers]
    assert names == ["0", "2", "unused", "frozen"]
    w, b = model[0].weight, model[0].bias
    expected = math.hypot(w.grad.norm().item(), b.grad.norm().item())
    assert modules.layers[0].grad_norm == pytest.approx(expected, rel=1e-6)
    assert modules.layers[0].numel == w.numel() + b.numel()

    ratio = BU.gradient_flow(model, metric="ratio", vanishing_threshold=1e9,
                             exploding_threshold=1e10)
    assert all(layer.status in ("vanishing", "no grad") for layer in ratio.layers)

    pytest.importorskip("matplotlib")
    path = tmp_path / "flow.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib complaining about the backend
        BU.gradient_flow(model, plot=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_gradient_flow_rejects_bad_arguments():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="by must be 'parameter' or 'module'"):
        BU.gradient_flow(model, by="layer")
    with pytest.raises(ValueError, match="metric must be"):
        BU.gradient_flow(model, metric="norm")
    with pytest.raises(ValueError, match="vanishing_threshold < exploding_threshold"):
        BU.gradient_flow(model, vanishing_threshold=10.0, exploding_threshold=1.0)
    with pytest.raises(ValueError, match="norm_type must be a positive number"):
        BU.gradient_flow(model, norm_type=0)


def test_clip_grad_norm_within_max_norm_leaves_gradients_bitwise():
    # The coefficient is exactly 1: ours skips the multiply, torch multiplies by 1; either way
    # every bit stays, signed zeros and subnormals included.
    values = torch.tensor([0.0, -0.0, 1e-40, -3.5, 2.0 ** -126, 7.0])
    params = [torch.nn.Parameter(torch.zeros(6)) for _ in range(2)]
    for p in params:
        p.grad = values.clone()
    total = BU.clip_grad_norm_(params, 100.0)
    torch.testing.assert_close(total, torch.linalg.vector_norm(torch.cat([values, values])))
    for p in params:
        assert torch.equal(p.grad.view(torch.int32), values.view(torch.int32))


def test_bench_clipping_rows():
    from backprop_ext.benchmarks import bench_utils

    rows = bench_utils.run("cpu", sizes=[1 << 20], reps=1)
    assert [r.op for r in rows] == list(bench_utils.OPS)
    assert all(r.ms > 0 and r.torch_ms > 0 and r.bytes > 0 for r in rows)
