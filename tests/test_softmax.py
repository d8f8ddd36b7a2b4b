"""The softmax family against torch: values, gradients, higher-order AD, tracing, edge values,
properties and bad input."""

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.testing import assert_matches, compare


def _rand(shape, device, dtype, scale=3.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


# (shape, dim) pairs that matter: 0-d, empty, one element, odd lengths, rows longer than a
# block, inner (strided) dims, every dim of a 3-d tensor.
SHAPES = [
    ((), 0), ((0,), 0), ((1,), 0), ((7,), -1), ((3, 1023), 1), ((2, 4097), -1), ((5, 7, 3), 0),
    ((5, 7, 3), 1), ((5, 7, 3), 2), ((4, 0, 3), 1), ((4, 0, 3), 2), ((2, 3, 1), 1),
]
SHAPE_IDS = [f"{'x'.join(map(str, s)) or '0d'}-d{d}" for s, d in SHAPES]


def _parity(fn_ours, fn_torch, x, grad_scale=1.0):
    xo, xt = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    xr = x.detach().double().clone().requires_grad_()
    yo, yt, yr = fn_ours(xo), fn_torch(xt), fn_torch(xr)
    assert yo.shape == yt.shape and yo.dtype == yt.dtype
    assert_matches(yo, yt, yr)
    g = torch.randn(yr.shape, dtype=torch.float64).to(device=x.device, dtype=yo.dtype) * grad_scale
    yo.backward(g)
    yt.backward(g)
    yr.backward(g.double())
    assert_matches(xo.grad, xt.grad, xr.grad)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape,dim", SHAPES, ids=SHAPE_IDS)
def test_softmax_matches_torch(log, shape, dim, device, dtype):
    x = _rand(shape, device, dtype)
    ours, theirs = (BF.log_softmax, TF.log_softmax) if log else (BF.softmax, TF.softmax)
    _parity(lambda t: ours(t, dim), lambda t: theirs(t, dim), x)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_softmax_non_contiguous(log, layout, device):
    base = _rand((12, 33), device, torch.float32)
    x = base[::2] if layout == "strided" else base.t()
    ours, theirs = (BF.log_softmax, TF.log_softmax) if log else (BF.softmax, TF.softmax)
    for dim in (0, 1):
        _parity(lambda t, dim=dim: ours(t, dim), lambda t, dim=dim: theirs(t, dim), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_long_rows(log, dtype, device):
    x = _rand((2, 262_144), device, dtype, scale=5.0)
    ours, theirs = (BF.log_softmax, TF.log_softmax) if log else (BF.softmax, TF.softmax)
    _parity(lambda t: ours(t, -1), lambda t: theirs(t, -1), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_row_lengths_about_the_kernel_switches(log, dtype, device):
    # On CUDA rows of up to 1024 elements are a warp's (1, 2, 4, ... 16-byte packs a lane),
    # longer ones a block's, and lengths that are no whole number of packs go element by element.
    # Five rows: not a whole number of a block's rows. Then -inf entries and a row of -inf.
    ours, theirs = (BF.log_softmax, TF.log_softmax) if log else (BF.softmax, TF.softmax)
    for D in (1, 7, 31, 32, 33, 128, 129, 256, 257, 512, 513, 1023, 1024, 1025, 2048, 2052):
        x = _rand((5, D), device, dtype, scale=4.0)
        _parity(lambda t: ours(t, -1), lambda t: theirs(t, -1), x)
        x[1, ::3] = float("-inf")
        x[3] = float("-inf")
        r = compare(ours(x, -1), theirs(x, -1), theirs(x.double(), -1))
        assert r.ok, f"D={D}: {r.message}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_logsumexp_last_dim_lengths(dtype, device):
    # The CUDA backward over the last dim walks all rows as one elementwise pass (tiles of 1024
    # elements, 16-byte packs when a row is a whole number of them): lengths about those.
    for rows, D in ((1, 1), (5, 7), (3, 8), (129, 8), (1, 1023), (1, 1024), (1, 1025),
                    (3, 1024), (5, 1032), (2, 2049)):
        x = _rand((rows, D), device, dtype, scale=4.0)
        _parity(lambda t: BF.logsumexp(t, -1), lambda t: torch.logsumexp(t, -1), x)


def test_softmax_dtype_argument(device):
    x = _rand((4, 9), device, torch.float16)
    for fn_o, fn_t in ((BF.softmax, TF.softmax), (BF.log_softmax, TF.log_softmax)):
        y = fn_o(x, 1, dtype=torch.float32)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, fn_t(x, 1, dtype=torch.float32))


def test_softmax_implicit_dim_warns_like_torch():
    x = torch.randn(2, 3, 4)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        y = BF.softmax(x)
    with pytest.warns(UserWarning):
        torch.testing.assert_close(y, TF.softmax(x))


@pytest.mark.parametrize("shape,dim,keepdim", [
    ((), 0, False), ((7,), 0, False), ((3, 1023), 1, True), ((3, 1023), -1, False),
    ((5, 7, 3), 1, False), ((5, 7, 3), 0, True), ((5, 7, 3), (0, 2), False),
    ((5, 7, 3), (2, 0), True), ((4, 0, 3), 1, False), ((4, 0, 3), 2, True),
    ((2, 3, 4), (0, 1, 2), False),
], ids=lambda v: str(v))
def test_logsumexp_matches_torch(shape, dim, keepdim, device, dtype):
    x = _rand(shape, device, dtype)
    _parity(lambda t: BF.logsumexp(t, dim, keepdim), lambda t: torch.logsumexp(t, dim, keepdim), x)


def test_logsumexp_long_rows_and_non_contiguous(device):
    x = _rand((3, 262_144), device, torch.float32, scale=10.0)
    _parity(lambda t: BF.logsumexp(t, 1), lambda t: torch.logsumexp(t, 1), x)
    y = _rand((10, 9), device, torch.float32)[::2].t()
    _parity(lambda t: BF.logsumexp(t, 0), lambda t: torch.logsumexp(t, 0), y)


# --- edge values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_edge_values(dtype, device):
    inf, nan = float("inf"), float("nan")
    rows = [
        [0.0, 1.0, -inf, 2.0],      # -inf entry
        [-inf, -inf, -inf, -inf],   # all -inf
        [1.0, inf, 0.0, -inf],      # +inf entry
        [1.0, nan, 0.0, 2.0],       # NaN entry
        [1e4, -1e4, 1e4, 0.0],      # large logits (fp16/bf16 safe)
        [-1e4, -1e4, -1e4, -1e4],   # large negative, equal
        [-inf, 3.0, -inf, -inf],    # single finite
    ]
    x = torch.tensor(rows, dtype=dtype, device=device)
    for dim in (1, 0):
        for ours, theirs in ((BF.softmax, TF.softmax), (BF.log_softmax, TF.log_softmax),
                             (BF.logsumexp, torch.logsumexp)):
            r = compare(ours(x, dim), theirs(x, dim), theirs(x.double(), dim))
            assert r.ok, f"{ours.__name__} dim={dim}: {r.message}"
    # Long rows (the vector path) with the same edge values.
    long = x.repeat(1, 40)
    for ours, theirs in ((BF.softmax, TF.softmax), (BF.log_softmax, TF.log_softmax),
                         (BF.logsumexp, torch.logsumexp)):
        r = compare(ours(long, 1), theirs(long, 1), theirs(long.double(), 1))
        assert r.ok, f"{ours.__name__} long: {r.message}"


def test_large_logits_half_stay_finite(device):
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.tensor([[1e4, -1e4, 5e3], [-6e4, 6e4, 0.0]], dtype=dtype, device=device)
        for fn in (BF.softmax, BF.log_softmax):
            y = fn(x, 1)
            assert torch.isfinite(y[:, :2].float()).any()
            assert not torch.isnan(y).any()
        assert torch.isfinite(BF.logsumexp(x, 1)).all()
        loss = BF.cross_entropy(x, torch.tensor([0, 1], device=device))
        assert torch.isfinite(loss)


def test_error_no_larger_than_torch(device):
    # Against a float64 reference, our max error is within torch's own (plus half an ulp of the
    # dtype at the largest value, for rounding ties).
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = _rand((64, 4099), device, dtype, scale=8.0)
        for ours, theirs in ((BF.softmax, TF.softmax), (BF.log_softmax, TF.log_softmax)):
            ref = theirs(x.double(), 1)
            err_o = (ours(x, 1).double() - ref).abs().max().item()
            err_t = (theirs(x, 1).double() - ref).abs().max().item()
            half_ulp = torch.finfo(dtype).eps / 2 * ref.abs().max().item()
            assert err_o <= err_t + half_ulp, (ours.__name__, dtype, err_o, err_t)


# --- properties


def test_properties(device):
    x = _rand((16, 257), device, torch.float32)
    y = BF.softmax(x, 1)
    torch.testing.assert_close(y.sum(1), torch.ones(16, device=device))
    assert (y >= 0).all()
    torch.testing.assert_close(BF.softmax(x + 1000.0, 1), y)
    torch.testing.assert_close(BF.log_softmax(x, 1).exp(), y)
    torch.testing.assert_close(BF.logsumexp(x + 5.0, 1), BF.logsumexp(x, 1) + 5.0)


# --- autograd completeness (float64)


def _grad_inputs(shape, device):
    return torch.randn(shape, dtype=torch.float64, device=device).requires_grad_()


@pytest.mark.parametrize("fn", [
    lambda x: BF.softmax(x, -1), lambda x: BF.softmax(x, 0), lambda x: BF.log_softmax(x, -1),
    lambda x: BF.log_softmax(x, 1), lambda x: BF.logsumexp(x, -1),
    lambda x: BF.logsumexp(x, 0, keepdim=True), lambda x: BF.logsumexp(x, (0, 2)),
], ids=["softmax-last", "softmax-inner", "log_softmax-last", "log_softmax-inner",
        "logsumexp-last", "logsumexp-inner-keepdim", "logsumexp-multi"])
def test_gradcheck_gradgradcheck(fn, device):
    x = _grad_inputs((3, 4, 5), device)
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


CE_CASES = {
    "mean": dict(),
    "sum-weight": dict(reduction="sum", use_weight=True),
    "none-ignore": dict(reduction="none", ignore=True),
    "mean-weight-ignore-smooth": dict(use_weight=True, ignore=True, label_smoothing=0.2),
    "mean-smooth": dict(label_smoothing=0.1),
    "none-weight-smooth": dict(reduction="none", use_weight=True, label_smoothing=0.3),
}


def _ce_args(shape, device, dtype, use_weight=False, ignore=False, reduction="mean",
             label_smoothing=0.0, probs=False):
    C = shape[1] if len(shape) > 1 else shape[0]
    x = _rand(shape, device, dtype)
    target_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if probs:
        target = torch.softmax(torch.randn(shape, dtype=torch.float64), 1 if len(shape) > 1 else 0)
        target = target.to(device=device, dtype=dtype)
    else:
        target = torch.randint(0, C, target_shape, device=device)
        if ignore and target.numel() > 1:
            target.view(-1)[::3] = -100
    weight = ((torch.rand(C, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
              if use_weight else None)
    kwargs = dict(weight=weight, reduction=reduction, label_smoothing=label_smoothing)
    return x, target, kwargs


@pytest.mark.parametrize("case", list(CE_CASES), ids=list(CE_CASES))
@pytest.mark.parametrize("shape", [(5,), (6, 11), (3, 7, 2, 3), (0, 4)],
                         ids=["C", "NxC", "NxCxd1xd2", "empty"])
def test_cross_entropy_matches_torch(case, shape, device, dtype):
    x, target, kwargs = _ce_args(shape, device, dtype, **CE_CASES[case])
    if x.numel() == 0 and kwargs["reduction"] == "mean":
        out = BF.cross_entropy(x, target, **kwargs)
        assert out.isnan() and TF.cross_entropy(x, target, **kwargs).isnan()
        return
    def theirs(t):  # the float64 reference needs a float64 weight
        w = kwargs["weight"]
        w_t = None if w is None else w.to(t.dtype)
        return TF.cross_entropy(t, target, **{**kwargs, "weight": w_t})

    _parity(lambda t: BF.cross_entropy(t, target, **kwargs), theirs, x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_probability_targets(reduction, smoothing, device, dtype):
    x, target, kwargs = _ce_args((6, 9), device, dtype, probs=True, use_weight=True,
                                 reduction=reduction, label_smoothing=smoothing)
    w = kwargs["weight"]
    _parity(lambda t: BF.cross_entropy(t, target, **kwargs),
            lambda t: TF.cross_entropy(t, target.to(t.dtype),
                                       **{**kwargs, "weight": w.to(t.dtype)}), x)


@pytest.mark.parametrize("case", list(CE_CASES), ids=list(CE_CASES))
def test_cross_entropy_gradcheck(case, device):
    x, target, kwargs = _ce_args((4, 6), device, torch.float64, **CE_CASES[case])
    x.requires_grad_()
    fn = lambda t: BF.cross_entropy(t, target, **kwargs)  # noqa: E731
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_cross_entropy_probs_gradcheck(device):
    x, target, kwargs = _ce_args((4, 6), device, torch.float64, probs=True, label_smoothing=0.1)
    x.requires_grad_()
    target.requires_grad_()
    assert gradcheck(lambda a, b: BF.cross_entropy(a, b, **kwargs), (x, target))
    assert gradgradcheck(lambda a, b: BF.cross_entropy(a, b, **kwargs), (x, target))


def test_cross_entropy_per_element_grad_output(device):
    x, target, kwargs = _ce_args((5, 7), device, torch.float64, reduction="none", ignore=True,
                                 label_smoothing=0.1, use_weight=True)
    xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    g = torch.randn(5, dtype=torch.float64, device=device)
    BF.cross_entropy(xo, target, **kwargs).backward(g)
    TF.cross_entropy(xt, target, **kwargs).backward(g)
    torch.testing.assert_close(xo.grad, xt.grad)


FWD_AD = {
    "softmax": (lambda x: BF.softmax(x, 1), lambda x: TF.softmax(x, 1)),
    "log_softmax": (lambda x: BF.log_softmax(x, 0), lambda x: TF.log_softmax(x, 0)),
    "logsumexp": (lambda x: BF.logsumexp(x, 1), lambda x: torch.logsumexp(x, 1)),
}


@pytest.mark.parametrize("name", list(FWD_AD))
def test_forward_mode_and_forward_over_reverse(name, device):
    ours, theirs = FWD_AD[name]
    x = torch.randn(4, 6, dtype=torch.float64, device=device)
    t = torch.randn_like(x)
    torch.testing.assert_close(torch.func.jvp(ours, (x,), (t,))[1],
                               torch.func.jvp(theirs, (x,), (t,))[1])

    def grad_of(fn):  # a non-linear head so the second derivative matters
        return lambda inp: torch.func.grad(lambda z: fn(z).sin().sum())(inp)

    torch.testing.assert_close(torch.func.jvp(grad_of(ours), (x,), (t,))[1],
                               torch.func.jvp(grad_of(theirs), (x,), (t,))[1])


@pytest.mark.parametrize("case", ["mean", "mean-weight-ignore-smooth", "none-ignore"])
def test_cross_entropy_forward_mode(case, device):
    x, target, kwargs = _ce_args((5, 6), device, torch.float64, **CE_CASES[case])
    t = torch.randn_like(x)
    ours = torch.func.jvp(lambda z: BF.cross_entropy(z, target, **kwargs), (x,), (t,))[1]
    ref = torch.func.jvp(lambda z: TF.cross_entropy(z, target, **kwargs), (x,), (t,))[1]
    torch.testing.assert_close(ours, ref)


def test_opcheck(device):
    ops = torch.ops.backprop_ext
    x = torch.randn(4, 7, device=device)
    x3 = torch.randn(3, 5, 2, device=device)
    for inp, dim in ((x, 1), (x, 0), (x3, 1), (x.t(), 1)):
        for log in (False, True):
            y = ops.softmax_fwd(inp, dim, log)
            torch.library.opcheck(ops.softmax_fwd.default, (inp, dim, log))
            torch.library.opcheck(ops.softmax_bwd.default, (torch.randn_like(y), y, dim, log))
        r = ops.logsumexp_fwd(inp, dim)
        torch.library.opcheck(ops.logsumexp_fwd.default, (inp, dim))
        torch.library.opcheck(ops.logsumexp_bwd.default, (torch.randn_like(r), inp, r, dim))
    target = torch.tensor([0, 6, -100, 3], device=device)
    w = torch.rand(7, device=device)
    for weight, smooth in ((None, False), (w, True)):
        torch.library.opcheck(ops.cross_entropy_fwd.default, (x, target, weight, -100, smooth))
        nll, _, lse = ops.cross_entropy_fwd(x, target, weight, -100, smooth)
        torch.library.opcheck(ops.cross_entropy_bwd.default,
                              (x, target, weight, lse, torch.randn_like(nll),
                               torch.randn_like(nll) if smooth else None, -100))


def test_compile_fullgraph_matches_eager():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 10)
            self.loss = bnn.CrossEntropyLoss(label_smoothing=0.1)

        def forward(self, x, y):
            logits = self.lin(x)
            return (self.loss(logits, y) + BF.logsumexp(logits, 1).mean()
                    + BF.log_softmax(logits, 0).mean() + BF.softmax(logits, 1).max())

    model = Head()
    x, y = torch.randn(6, 8), torch.randint(0, 10, (6,))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out_e, out_c = model(x, y), compiled(x, y)
    torch.testing.assert_close(out_c, out_e)
    ge = torch.autograd.grad(out_e, model.parameters())
    gc = torch.autograd.grad(out_c, model.parameters())
    for a, b in zip(ge, gc):
        torch.testing.assert_close(a, b)


def test_autocast_cpu_follows_torch():
    lin = torch.nn.Linear(8, 10)
    x, y = torch.randn(4, 8), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        pairs = [(BF.softmax(logits, 1), TF.softmax(logits, 1)),
                 (BF.log_softmax(logits, 1), TF.log_softmax(logits, 1)),
                 (BF.logsumexp(logits, 1), torch.logsumexp(logits, 1)),
                 (BF.cross_entropy(logits, y), TF.cross_entropy(logits, y))]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, atol=2e-2, rtol=2e-2)


@pytest.mark.cuda
def test_autocast_cuda_follows_torch():
    lin = torch.nn.Linear(8, 10, device="cuda")
    x, y = torch.randn(4, 8, device="cuda"), torch.randint(0, 10, (4,), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        logits = lin(x)
        pairs = [(BF.softmax(logits, 1), TF.softmax(logits, 1)),
                 (BF.log_softmax(logits, 1), TF.log_softmax(logits, 1)),
                 (BF.logsumexp(logits, 1), torch.logsumexp(logits, 1)),
                 (BF.cross_entropy(logits, y), TF.cross_entropy(logits, y))]
    for ours, theirs in pairs:
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=2e-3)


# --- memory, aliasing


def test_cross_entropy_saves_no_logits_sized_extra():
    x = torch.randn(64, 1000, requires_grad=True)
    y = torch.randint(0, 1000, (64,))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = BF.cross_entropy(x, y, label_smoothing=0.1)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert all(t.data_ptr() == x.data_ptr() for t in big), "only the logits themselves are saved"
    loss.backward()


@pytest.mark.parametrize("smoothing", [False, True], ids=["plain", "smoothing"])
def test_cross_entropy_bwd_out_writes_slices_and_in_place(smoothing, device, dtype):
    # The out= form a chunked caller (linear + cross-entropy) uses: row blocks written into
    # slices of one gradient give the whole-batch gradient, bit for bit; and `out` may be the
    # logits themselves (each element read before it is written).
    ops = torch.ops.backprop_ext
    logits = _rand((10, 37), device, dtype)
    target = torch.tensor([0, 5, -100, 36, 2, 11, 7, 7, -100, 1], device=device)
    weight = (torch.rand(37, dtype=torch.float64) + 0.5).to(device, dtype)
    _, _, lse = ops.cross_entropy_fwd(logits, target, weight, -100, smoothing)
    g_nll = torch.randn(10, dtype=lse.dtype, device=device)
    g_smooth = torch.randn(10, dtype=lse.dtype, device=device) if smoothing else None
    whole = ops.cross_entropy_bwd(logits, target, weight, lse, g_nll, g_smooth, -100)

    out = torch.full_like(logits, float("nan"))
    for begin, end in ((0, 4), (4, 9), (9, 10)):
        ops.cross_entropy_bwd_out(
            logits[begin:end], target[begin:end], weight, lse[begin:end], g_nll[begin:end],
            g_smooth[begin:end] if smoothing else None, -100, out[begin:end])
    assert torch.equal(out, whole)

    in_place = logits.clone()
    ops.cross_entropy_bwd_out(in_place, target, weight, lse, g_nll, g_smooth, -100, in_place)
    assert torch.equal(in_place, whole)
    torch.library.opcheck(ops.cross_entropy_bwd_out.default,
                          (logits, target, weight, lse, g_nll, g_smooth, -100,
                           torch.empty_like(logits)))


def test_cross_entropy_bwd_out_checks_out():
    ops = torch.ops.backprop_ext
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    _, _, lse = ops.cross_entropy_fwd(logits, target, None, -100, False)
    args = (logits, target, None, lse, torch.ones(4), None, -100)
    with pytest.raises(RuntimeError, match="expected logits and out to have the same shape"):
        ops.cross_entropy_bwd_out(*args, torch.empty(4, 6))
    with pytest.raises(RuntimeError, match="expected logits and out to have the same dtype"):
        ops.cross_entropy_bwd_out(*args, torch.empty(4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="expected a contiguous out"):
        ops.cross_entropy_bwd_out(*args, torch.empty(5, 4).t())


def test_inputs_are_not_modified():
    x = torch.randn(8, 13, requires_grad=True)
    y = torch.randint(0, 13, (8,))
    x0, y0 = x.detach().clone(), y.clone()
    for out in (BF.softmax(x, 1), BF.log_softmax(x, 1), BF.logsumexp(x, 1),
                BF.cross_entropy(x, y, label_smoothing=0.2)):
        out0 = out.detach().clone()
        out.sum().backward()
        assert torch.equal(out.detach(), out0)
    assert torch.equal(x.detach(), x0) and torch.equal(y, y0)


# --- modules


def test_modules_and_convert():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.LogSoftmax(dim=1))
    soft = torch.nn.Softmax(dim=-1)
    loss = torch.nn.CrossEntropyLoss(weight=torch.rand(6) + 0.5, ignore_index=2,
                                     label_smoothing=0.1, reduction="sum")
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 5, 1, 2])
    expected = (model(x), soft(x), loss(model[0](x), y))
    keys = list(loss.state_dict().keys())
    for m in (model, soft, loss):
        bnn.convert(m)
    assert type(model[1]) is bnn.LogSoftmax and type(soft) is bnn.Softmax
    assert type(loss) is bnn.CrossEntropyLoss and list(loss.state_dict()) == keys
    torch.testing.assert_close(model(x), expected[0])
    torch.testing.assert_close(soft(x), expected[1])
    torch.testing.assert_close(loss(model[0](x), y), expected[2])


# --- bad input


_CE_X = torch.randn(3, 5)
# (input, target, keywords, our exception, what our message says): the exception is torch's
# kind for the same mistake, checked against F.cross_entropy.
_CE_BAD = {
    "target out of range": (_CE_X, torch.tensor([0, 7, 1]), {}, IndexError,
                            r"target 7 at position 1 is out of bounds: expected a class index "
                            r"in \[0, 5\)"),
    "negative target": (_CE_X, torch.tensor([0, -3, 1]), {}, IndexError, "target -3"),
    "target dtype": (_CE_X, torch.tensor([0, 1, 1], dtype=torch.int32), {}, RuntimeError,
                     "expected target of dtype int64"),
    "batch size": (_CE_X, torch.tensor([0, 1]), {}, ValueError,
                   r"expected class-index target of shape \(3,\)"),
    "spatial size": (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long), {},
                     RuntimeError, r"expected class-index target of shape \(2, 4, 4\)"),
    "target ndim": (_CE_X, torch.zeros(3, 2, dtype=torch.long), {}, RuntimeError,
                    r"expected class-index target of shape \(3,\)"),
    "probabilities' classes": (_CE_X, torch.rand(3, 4), {}, RuntimeError,
                               "class-probability target"),
    "probabilities' batch": (_CE_X, torch.rand(2, 5), {}, ValueError,
                             "class-probability target"),
    "weight shape": (_CE_X, torch.tensor([0, 1, 1]), {"weight": torch.ones(4)}, RuntimeError,
                     "weight of shape"),
    "reduction": (_CE_X, torch.tensor([0, 1, 1]), {"reduction": "avg"}, ValueError,
                  "reduction must be one of"),
    "label_smoothing": (_CE_X, torch.tensor([0, 1, 1]), {"label_smoothing": 2.0}, RuntimeError,
                        r"label_smoothing must be in \[0, 1\]"),
    "0-d input": (torch.tensor(1.0), torch.tensor(0), {}, RuntimeError, "0-d"),
}


@pytest.mark.parametrize("case", list(_CE_BAD))
def test_cross_entropy_bad_input(case):
    x, target, kwargs, kind, message = _CE_BAD[case]
    with pytest.raises(kind, match=message):
        BF.cross_entropy(x, target, **kwargs)
    with pytest.raises(Exception) as theirs:
        TF.cross_entropy(x, target, **kwargs)
    assert isinstance(theirs.value, kind), f"torch's: {theirs.value!r}"


def test_bad_inputs():
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="dim 2 is out of range for a tensor of 2 dimensions"):
        BF.softmax(x, 2)
    with pytest.raises(IndexError, match="dim -3 is out of range"):
        BF.logsumexp(x, -3)
    with pytest.raises(RuntimeError, match="softmax: expected input to be a float64, float32, "
                                           "float16 or bfloat16 tensor, but got Long"):
        BF.softmax(torch.arange(4), 0)
    with pytest.raises(RuntimeError, match="same shape"):
        torch.ops.backprop_ext.softmax_bwd(torch.randn(3, 4), torch.randn(3, 5), 1)


# --- arguments and shapes at the edge of what torch takes


@pytest.mark.parametrize("shape,dim,keepdim", [
    ((2, 0, 3), (0, 2), False), ((2, 0, 3), (2, 0), True), ((2, 0, 3), (0, 1), False),
    ((0, 4, 5), (1, 2), True), ((3, 0), (0, 1), False), ((2, 0, 3, 1), (0, 3), False),
], ids=str)
def test_logsumexp_several_dims_of_an_empty_tensor(shape, dim, keepdim, device):
    x = torch.empty(shape, device=device)
    ours, theirs = BF.logsumexp(x, dim, keepdim), torch.logsumexp(x, dim, keepdim)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)  # empty, or -inf where only empty dims were reduced


def test_logsumexp_dims_as_torch_takes_them():
    x = torch.randn(3, 4, 5)
    np = pytest.importorskip("numpy")
    for dim in (np.int64(1), torch.tensor(1), [0, 2], (np.int64(2), 0), torch.Size([1, 2])):
        torch.testing.assert_close(BF.logsumexp(x, dim), torch.logsumexp(x, dim))
    for dim, x_ in (((0, 0), x), ((0, -3), x), ((2, 1, -1), x), ((0, -1), torch.tensor(2.0))):
        with pytest.raises(RuntimeError, match="appears multiple times in the list of dims"):
            torch.logsumexp(x_, dim)
        with pytest.raises(RuntimeError, match=f"dim {dim[0] % max(x_.dim(), 1)} appears "
                                               "multiple times in the list of dims"):
            BF.logsumexp(x_, dim)


def test_unclear_arguments_raise_type_errors_naming_them():
    x = torch.randn(3, 4)
    for dim in (None, 1.0, "a", True, (0, 1.0), (False,)):
        with pytest.raises((TypeError, RuntimeError)):  # torch 2.11: RuntimeError for None
            torch.logsumexp(x, dim)
        with pytest.raises(TypeError, match=r"logsumexp\(\): argument 'dim' \(position 2\) must "
                                            "be int or tuple of ints"):
            BF.logsumexp(x, dim)
    for fn in (BF.softmax, BF.log_softmax):
        with pytest.raises(TypeError, match="argument 'dtype' .* must be torch.dtype or None, not "
                                            "str"):
            fn(x, 1, dtype="float32")
        with pytest.raises(TypeError, match="dtype must be float64, float32, float16 or"):
            fn(x, 1, dtype=torch.int64)
        with pytest.raises(TypeError, match="argument 'dim' .* must be int or None, not str"):
            fn(x, "a")
    for weight in ([1.0, 1.0, 1.0, 1.0], (1.0,) * 4):
        with pytest.raises(TypeError, match="cross_entropy_loss.*'weight'"):
            TF.cross_entropy(x, torch.tensor([0, 1, 2]), weight=weight)
        with pytest.raises(TypeError, match="argument 'weight' .* must be Tensor or None, not"):
            BF.cross_entropy(x, torch.tensor([0, 1, 2]), weight=weight)
    with pytest.raises(TypeError, match=r"convert\(\): argument 'model' \(position 1\) must be "
                                        "torch.nn.Module, not NoneType"):
        bnn.convert(None)


def test_cross_entropy_zero_total_weight_with_smoothing_is_nan_like_torch(device):
    # The mean divides by the weight of the counted targets: 0 here, so torch returns NaN (0/0
    # for the NLL term) even though the smoothing term alone would be inf.
    x = torch.randn(3, 4, device=device)
    t = torch.tensor([0, 1, 2], device=device)
    w = torch.tensor([0.0, 0, 0, 1], device=device)
    for smoothing in (0.0, 0.1, 1.0):
        for reduction in ("mean", "sum", "none"):
            kwargs = dict(weight=w, label_smoothing=smoothing, reduction=reduction)
            ours, theirs = BF.cross_entropy(x, t, **kwargs), TF.cross_entropy(x, t, **kwargs)
            torch.testing.assert_close(ours, theirs, equal_nan=True)
            assert ours.isnan().any() == (reduction == "mean")


def test_cross_entropy_weight_dtype_like_torch(device):
    x = torch.randn(3, 4, device=device)
    t = torch.tensor([0, 1, 3], device=device)
    for w_dtype in (torch.float64, torch.float16):
        w = torch.rand(4, device=device, dtype=w_dtype)
        with pytest.raises(RuntimeError, match="expected scalar type Float"):
            TF.cross_entropy(x, t, weight=w)
        name = {torch.float64: "Double", torch.float16: "Half"}[w_dtype]  # the op's C++ names
        with pytest.raises(RuntimeError, match=f"expected weight of input's dtype Float, "
                                               f"got {name}"):
            BF.cross_entropy(x, t, weight=w)
    # Class probabilities: torch promotes input, target and weight instead.
    p = torch.softmax(torch.randn(3, 4, device=device), 1)
    for w_dtype, p_dtype in ((torch.float64, torch.float32), (torch.float32, torch.float64),
                             (torch.float16, torch.float16)):
        kwargs = dict(weight=torch.rand(4, device=device, dtype=w_dtype), label_smoothing=0.1)
        ours = BF.cross_entropy(x, p.to(p_dtype), **kwargs)
        theirs = TF.cross_entropy(x, p.to(p_dtype), **kwargs)
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours, theirs)


def test_cross_entropy_ignore_index_with_probabilities_like_torch(device):
    x = torch.randn(3, 4, device=device)
    p = torch.softmax(torch.randn(3, 4, device=device), 1)
    for ignore_index in (0, 2, 7):
        with pytest.raises(RuntimeError, match="ignore_index is not supported"):
            TF.cross_entropy(x, p, ignore_index=ignore_index)
        with pytest.raises(RuntimeError, match="ignore_index is not supported for class-"
                                               f"probability targets, got ignore_index="
                                               f"{ignore_index}"):
            BF.cross_entropy(x, p, ignore_index=ignore_index)
    for ignore_index in (-100, -1):  # negative values are accepted and mean nothing
        torch.testing.assert_close(BF.cross_entropy(x, p, ignore_index=ignore_index),
                                   TF.cross_entropy(x, p, ignore_index=ignore_index))


@pytest.mark.parametrize("weight", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_without_classes_like_torch(weight, smoothing, reduction, device):
    # Logits of shape (3, 0): torch accepts class-index targets that are all ignored, and
    # class-probability targets; its results are 0 or NaN (smoothing divides by C = 0).
    kwargs = dict(weight=torch.empty(0, device=device) if weight else None,
                  label_smoothing=smoothing, reduction=reduction)
    for target in (torch.full((3,), -100, device=device), torch.empty(3, 0, device=device)):
        x, xt = (torch.empty(3, 0, device=device, requires_grad=True) for _ in range(2))
        ours, theirs = BF.cross_entropy(x, target, **kwargs), TF.cross_entropy(xt, target, **kwargs)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, equal_nan=True)
        ours.sum().backward()
        assert x.grad.shape == (3, 0)
    for x in (torch.empty(0), torch.empty(0, 0)):  # no classes and no (or one) row
        t = torch.tensor(-100) if x.dim() == 1 else torch.empty(0, dtype=torch.long)
        torch.testing.assert_close(BF.cross_entropy(x, t, **kwargs),
                                   TF.cross_entropy(x, t, **kwargs), equal_nan=True)


def test_cross_entropy_without_classes_rejects_counted_targets():
    x = torch.empty(3, 0)
    with pytest.raises(IndexError, match="Target 0 is out of bounds"):
        TF.cross_entropy(x, torch.tensor([-100, 0, -100]))
    with pytest.raises(IndexError, match="target 0 is out of bounds: input has no classes"):
        BF.cross_entropy(x, torch.tensor([-100, 0, -100]))
