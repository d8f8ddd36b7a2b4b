"""linear_cross_entropy against torch's F.cross_entropy(F.linear(...)): values and gradients in
every dtype and option, row blocks, higher-order AD, memory, tracing, autocast, the Module, bad
input."""

import json

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.checkpoint.memory import LiveTensorMemory
from backprop_ext.ops.linear_cross_entropy import default_chunk_size
from backprop_ext.testing import LINEAR_CROSS_ENTROPY_CASES, assert_parity

CASES = [pytest.param(c, id=c.label) for c in LINEAR_CROSS_ENTROPY_CASES]


def _rand(shape, device, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, dtype=torch.float64, generator=g) * scale).to(device, dtype)


def _head(n, h, v, device, dtype, bias=True):
    """x (n, h), weight (v, h), bias (v,) or None, drawn in float64 then cast."""
    return (_rand((n, h), device, dtype, seed=1), _rand((v, h), device, dtype, 0.5, seed=2),
            _rand((v,), device, dtype, 0.5, seed=3) if bias else None)


def _target(shape, v, device, ignore_every=4, ignore_index=-100, seed=5):
    """Class indices, every `ignore_every`-th one ignore_index (when that is not a class)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, v, shape, generator=g)
    if ignore_every:
        t.view(-1)[::ignore_every] = ignore_index
    return t.to(device)


def _lce(x, w, target, b=None, *, class_weight=None, chunk_size=None, **kw):
    """linear_cross_entropy with the bias, class weight and block size of these tests, in
    torch's signature (linear_bias=, weight=, options=)."""
    options = BF.LinearCrossEntropyOptions(batch_chunk_size=chunk_size) if chunk_size else None
    return BF.linear_cross_entropy(x, w, target, linear_bias=b, weight=class_weight,
                                   options=options, **kw)


# Options that matter: each reduction; class weights; label smoothing, with and without weights;
# an ignore_index that is a real class; no ignored rows.
OPTIONS = {
    "mean": dict(),
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "mean-class_weight": dict(class_weight=True),
    "mean-smoothing": dict(label_smoothing=0.2),
    "sum-class_weight-smoothing": dict(reduction="sum", class_weight=True, label_smoothing=0.1),
    "none-class_weight-smoothing": dict(reduction="none", class_weight=True, label_smoothing=0.3),
    "mean-ignore_index=3": dict(ignore_index=3),
}


def _options(name, v, device, dtype):
    kw = dict(OPTIONS[name])
    if kw.pop("class_weight", False):
        kw["class_weight"] = (_rand((v,), "cpu", torch.float64, seed=4).abs() + 0.5).to(
            device, dtype)
    return kw


def _fns(target, chunk_size=None, **kw):
    """(ours, torch's) as functions of (x, weight, bias)."""
    cw = kw.pop("class_weight", None)

    def ours(x, w, b=None):
        return _lce(x, w, target, b, class_weight=cw, chunk_size=chunk_size,
                                       **kw)

    def theirs(x, w, b=None):
        return TF.cross_entropy(TF.linear(x, w, b), target,
                                weight=cw.to(x.dtype) if cw is not None else None, **kw)

    return ours, theirs


# --- values and gradients


@pytest.mark.parametrize("case", CASES)
def test_case_table_matches_torch(case, device, dtype):
    assert_parity(case.ours, case.torch, case.make(device, dtype))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_matches_torch(option, bias, device, dtype):
    # 45 rows in blocks of 8: five full blocks and a partial one.
    n, h, v = 45, 24, 37
    inputs = _head(n, h, v, device, dtype, bias)
    kw = _options(option, v, device, dtype)
    target = _target((n,), v, device, ignore_index=kw.get("ignore_index", -100))
    ours, theirs = _fns(target, chunk_size=8, **kw)
    assert_parity(ours, theirs, inputs)


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 17, 100, None])
def test_block_size_changes_nothing(chunk_size, device):
    # In float64 every block size gives torch's result to rounding.
    n, h, v = 17, 8, 11
    x, w, b = _head(n, h, v, device, torch.float64)
    target = _target((n,), v, device, ignore_every=5)
    kw = _options("sum-class_weight-smoothing", v, device, torch.float64)
    ours, theirs = _fns(target, chunk_size=chunk_size, **kw)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    lo, lt = ours(*leaves), theirs(*ref)
    torch.testing.assert_close(lo, lt, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad(lo, leaves), torch.autograd.grad(lt, ref)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lead", [(), (3, 5), (2, 3, 4)], ids=["1d", "batch-seq", "3-lead"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_leading_dims_like_torch(lead, reduction, device):
    h, v = 6, 9
    x = _rand((*lead, h), device, torch.float32)
    w, b = _head(1, h, v, device, torch.float32)[1:]
    target = _target(lead, v, device, ignore_every=0)
    ours, _ = _fns(target, chunk_size=4, reduction=reduction)

    def theirs(x, w, b):  # the logits' classes are their last dim, as F.linear makes them
        loss = TF.cross_entropy(TF.linear(x, w, b).reshape(-1, v), target.reshape(-1),
                                reduction=reduction)
        return loss.reshape(lead) if reduction == "none" else loss

    assert ours(x, w, b).shape == (lead if reduction == "none" else ())
    assert_parity(ours, theirs, (x, w, b))


def test_empty_batch_like_torch(device):
    x, w, b = _head(0, 4, 5, device, torch.float32)
    target = torch.zeros(0, dtype=torch.int64, device=device)
    for reduction in ("mean", "sum", "none"):
        xl, wl, bl = (t.clone().requires_grad_() for t in (x, w, b))
        ours = _lce(xl, wl, target, bl, reduction=reduction)
        theirs = TF.cross_entropy(TF.linear(x, w, b), target, reduction=reduction)
        torch.testing.assert_close(ours, theirs, equal_nan=True)  # mean: 0/0 = nan, as torch
        if reduction != "mean":
            ours.sum().backward()
            assert xl.grad.shape == (0, 4) and torch.equal(wl.grad, torch.zeros_like(w))
            assert torch.equal(bl.grad, torch.zeros_like(b))


def test_every_row_ignored_like_torch(device):
    x, w, b = _head(6, 4, 5, device, torch.float64)
    target = torch.full((6,), -100, device=device)
    for reduction in ("mean", "sum", "none"):
        ours, theirs = _fns(target, chunk_size=4, reduction=reduction)
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        ref = [t.clone().requires_grad_() for t in (x, w, b)]
        lo, lt = ours(*leaves), theirs(*ref)
        torch.testing.assert_close(lo, lt, equal_nan=True)
        go = torch.autograd.grad(lo.sum(), leaves)
        gt = torch.autograd.grad(lt.sum(), ref)
        for a, r in zip(go, gt):
            torch.testing.assert_close(a, r, equal_nan=True)


@pytest.mark.parametrize("layout", ["strided-input", "transposed-weight"])
def test_non_contiguous_operands(layout, device):
    n, h, v = 10, 8, 13
    x, w, b = _head(n, h, v, device, torch.float32)
    if layout == "strided-input":
        x = _rand((2 * n, h), device, torch.float32)[::2]
    else:
        w = _rand((h, v), device, torch.float32, 0.5).t()
    assert not (x.is_contiguous() and w.is_contiguous())
    ours, theirs = _fns(_target((n,), v, device), chunk_size=3, label_smoothing=0.1)
    assert_parity(ours, theirs, (x, w, b))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_logits_in_half_stay_finite(dtype, device):
    # Logits near the top of float16's range: the reduction runs in float32, so the loss and
    # gradients stay finite where exp() of a logit would overflow in half precision.
    x = torch.full((4, 2), 100.0, device=device, dtype=dtype)
    w = torch.tensor([[300.0, 300.0], [-300.0, 0.0], [0.0, 250.0]], device=device, dtype=dtype)
    x.requires_grad_()
    w.requires_grad_()
    loss = _lce(x, w, torch.tensor([0, 1, 2, 1], device=device),
                                   chunk_size=3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_loss_dtype_and_device_follow_input(device, dtype):
    x, w, b = _head(5, 4, 6, device, dtype)
    loss = _lce(x, w, _target((5,), 6, device), b)
    assert loss.dtype == dtype and loss.device == x.device and loss.shape == ()


# --- the gradient's bookkeeping: the upstream gradient, retained graphs, which inputs


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_upstream_gradient_and_retained_graph(reduction, device):
    # The forward's gradients are scaled by the loss's gradient in place in the first backward;
    # a second backward through the retained graph recomputes them: both must be right.
    x, w, b = _head(9, 5, 7, device, torch.float64)
    ours, theirs = _fns(_target((9,), 7, device), chunk_size=4, reduction=reduction,
                        label_smoothing=0.1)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    lo, lt = ours(*leaves), theirs(*ref)
    for scale in (1.0, -2.5, 0.0):
        g = torch.full_like(lt, scale) + (torch.arange(lt.numel(), device=device).reshape(
            lt.shape) if reduction == "none" else 0)
        go = torch.autograd.grad(lo, leaves, g, retain_graph=True)
        gt = torch.autograd.grad(lt, ref, g, retain_graph=True)
        for a, r in zip(go, gt):
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("frozen", ["input", "weight", "bias"])
def test_gradients_only_where_required(frozen, device):
    x, w, b = _head(7, 4, 6, device, torch.float32)
    leaves = {"input": x, "weight": w, "bias": b}
    for name, t in leaves.items():
        t.requires_grad_(name != frozen)
    loss = _lce(x, w, _target((7,), 6, device), b, chunk_size=3)
    loss.backward()
    ref = {k: t.detach().clone().requires_grad_(k != frozen) for k, t in leaves.items()}
    TF.cross_entropy(TF.linear(ref["input"], ref["weight"], ref["bias"]),
                     _target((7,), 6, device)).backward()
    for name, t in leaves.items():
        if name == frozen:
            assert t.grad is None
        else:
            torch.testing.assert_close(t.grad, ref[name].grad)


def test_accumulates_into_existing_grads(device):
    x, w, b = _head(6, 4, 5, device, torch.float64)
    w.requires_grad_()
    target = _target((6,), 5, device)
    for _ in range(2):
        _lce(x, w, target, b, chunk_size=4).backward()
    ref = w.detach().clone().requires_grad_()
    for _ in range(2):
        TF.cross_entropy(TF.linear(x, ref, b), target).backward()
    torch.testing.assert_close(w.grad, ref.grad)


def test_no_grad_computes_the_loss_only(device):
    x, w, b = _head(6, 4, 5, device, torch.float32)
    w.requires_grad_()
    target = _target((6,), 5, device)
    with torch.no_grad():
        loss = _lce(x, w, target, b)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, TF.cross_entropy(TF.linear(x, w, b), target))


# --- higher-order and forward-mode AD (float64)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("option", ["mean", "none", "sum-class_weight-smoothing",
                                    "mean-ignore_index=3"])
def test_gradcheck_and_gradgradcheck(option, bias, device):
    x, w, b = _head(5, 3, 4, device, torch.float64, bias)
    kw = _options(option, 4, device, torch.float64)
    target = _target((5,), 4, device, ignore_every=3, ignore_index=kw.get("ignore_index", -100))
    ours, _ = _fns(target, chunk_size=2, **kw)
    inputs = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)
    fn = (lambda x, w, b: ours(x, w, b)) if bias else (lambda x, w: ours(x, w))
    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.parametrize("option", ["mean", "none-class_weight-smoothing"])
def test_forward_mode_matches_torch_func_jvp(option, device):
    x, w, b = _head(6, 3, 5, device, torch.float64)
    ours, theirs = _fns(_target((6,), 5, device, ignore_every=3), chunk_size=4,
                        **_options(option, 5, device, torch.float64))
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    torch.testing.assert_close(torch.func.jvp(ours, (x, w, b), tangents)[1],
                               torch.func.jvp(theirs, (x, w, b), tangents)[1])
    # Only some inputs carry a tangent.
    torch.testing.assert_close(
        torch.func.jvp(lambda w_: ours(x, w_, b), (w,), tangents[1:2])[1],
        torch.func.jvp(lambda w_: theirs(x, w_, b), (w,), tangents[1:2])[1])


def test_torch_func_grad_and_forward_over_reverse(device):
    x, w, b = _head(6, 3, 5, device, torch.float64)
    ours, theirs = _fns(_target((6,), 5, device, ignore_every=3), chunk_size=4,
                        label_smoothing=0.1)
    v = torch.randn_like(w)
    for head in (lambda loss: loss, torch.sin):  # sin: the second derivative of the loss matters
        fo = lambda w_, head=head: head(ours(x, w_, b))  # noqa: E731
        ft = lambda w_, head=head: head(theirs(x, w_, b))  # noqa: E731
        torch.testing.assert_close(torch.func.grad(fo)(w), torch.func.grad(ft)(w))
        torch.testing.assert_close(torch.func.jvp(torch.func.grad(fo), (w,), (v,))[1],
                                   torch.func.jvp(torch.func.grad(ft), (w,), (v,))[1])


# --- memory: O(chunk x V), never O(N x V)


def _step_peak(x, w, target, **kw):
    with LiveTensorMemory() as mem:
        torch.autograd.grad(_lce(x, w, target, **kw).sum(), (x, w))
    return mem.peak


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_peak_memory_is_one_block_beyond_the_gradients(reduction):
    # A training step's peak: the gradients it returns, one (chunk, V) block of logits and
    # O(N) per-row vectors; no more for four times the rows. torch's holds 3 N x V tensors.
    h, v, chunk = 64, 2000, 32
    peaks = []
    for n in (256, 1024):
        x = torch.randn(n, h, requires_grad=True)
        w = torch.randn(v, h, requires_grad=True)
        target = torch.randint(0, v, (n,))
        grads = (x.numel() + w.numel()) * 4
        block = chunk * v * 4
        peak = _step_peak(x, w, target, chunk_size=chunk, reduction=reduction)
        assert peak <= grads + block + 64 * n, (n, peak, grads, block)
        peaks.append(peak - x.numel() * 4)  # minus grad_input, which grows with n
    assert peaks[1] <= peaks[0] + 64 * 1024  # the O(N) vectors of 8-byte entries, no more


def test_saves_nothing_logits_sized():
    n, h, v = 64, 16, 1000
    x = torch.randn(n, h, requires_grad=True)
    w = torch.randn(v, h, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _lce(x, w, torch.randint(0, v, (n,)), chunk_size=8)
    assert all(t.numel() <= max(x.numel(), w.numel()) for t in saved)
    assert {t.data_ptr() for t in saved if t.numel() == w.numel()} == {w.data_ptr()}
    loss.backward()


def test_inputs_are_not_modified(device):
    x, w, b = _head(9, 4, 7, device, torch.float32)
    target = _target((9,), 7, device)
    cw = torch.rand(7, device=device) + 0.5
    before = [t.clone() for t in (x, w, b, target, cw)]
    leaves = [t.requires_grad_() for t in (x, w, b)]
    _lce(*leaves[:2], target, leaves[2], class_weight=cw, chunk_size=4,
                            label_smoothing=0.1).backward()
    for t, t0 in zip((x, w, b, target, cw), before):
        assert torch.equal(t.detach(), t0)


def test_default_chunk_size():
    # 32 MiB of float32 logits of 32000 classes: 262 rows, in multiples of 64.
    assert default_chunk_size(2048, 32000, torch.float32, "cpu") == 256
    assert default_chunk_size(100, 32000, torch.float32, "cpu") == 100
    assert default_chunk_size(8192, 128256, torch.bfloat16, "cuda") == 2048
    assert default_chunk_size(4096, 10_000_000, torch.float32, "cpu") == 8
    assert default_chunk_size(0, 10, torch.float32, "cpu") == 1


# --- torch.compile, autocast


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compile_fullgraph_matches_eager(reduction):
    x, w, b = _head(11, 6, 9, "cpu", torch.float32)
    target = _target((11,), 9, "cpu")
    cw = torch.rand(9) + 0.5

    def fn(x, w, b):
        return _lce(x, w, target, b, class_weight=cw, label_smoothing=0.1,
                                       reduction=reduction, chunk_size=4)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    lc, le = compiled(*leaves), fn(*ref)
    torch.testing.assert_close(lc, le)
    g = torch.randn_like(le)
    for a, r in zip(torch.autograd.grad(lc, leaves, g), torch.autograd.grad(le, ref, g)):
        torch.testing.assert_close(a, r)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager():
    x, w, b = _head(11, 6, 9, "cpu", torch.float32)
    target = _target((11,), 9, "cpu")
    fn = lambda x, w, b: _lce(x, w, target, b, chunk_size=4)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    lc, le = compiled(*leaves), fn(*ref)
    torch.testing.assert_close(lc, le)
    for a, r in zip(torch.autograd.grad(lc, leaves), torch.autograd.grad(le, ref)):
        torch.testing.assert_close(a, r)


def _autocast_matches_torch(device, dtype):
    # torch's path under autocast: F.linear in `dtype`, cross-entropy in float32 (a float32
    # loss); the gradients reach the float32 leaves through the casts.
    x, w, b = _head(12, 8, 10, device, torch.float32)
    target = _target((12,), 10, device)
    results = []
    for fn in _fns(target, chunk_size=5, label_smoothing=0.1):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        with torch.autocast(device, dtype=dtype):
            loss = fn(*leaves)
        loss.backward()
        results.append((loss, [t.grad for t in leaves]))
    (lo, go), (lt, gt) = results
    assert lo.dtype == lt.dtype == torch.float32
    torch.testing.assert_close(lo, lt, atol=1e-2, rtol=1e-2)
    for a, r in zip(go, gt):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, r, atol=1e-2, rtol=2e-2)


def test_autocast_cpu_matches_torch():
    _autocast_matches_torch("cpu", torch.bfloat16)


def test_autocast_takes_mixed_dtypes_like_linear():
    # Under autocast F.linear takes a float32 input with a bfloat16 weight; so do we. Outside it,
    # mixed dtypes are an error.
    x, w, b = _head(6, 4, 5, "cpu", torch.float32)
    w = w.bfloat16()
    target = _target((6,), 5, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = _lce(x, w, target, b)
        theirs = TF.cross_entropy(TF.linear(x, w, b), target)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, atol=1e-2, rtol=1e-2)
    with pytest.raises(RuntimeError, match="input and linear_weight to have the same dtype"):
        _lce(x, w, target, b)


@pytest.mark.cuda
def test_autocast_cuda_matches_torch():
    _autocast_matches_torch("cuda", torch.float16)


# --- the Module


def test_module_state_dict_and_init_like_linear():
    torch.manual_seed(3)
    lin = torch.nn.Linear(16, 24)
    torch.manual_seed(3)
    head = bnn.LinearCrossEntropy(16, 24, label_smoothing=0.1,
                                  options=BF.LinearCrossEntropyOptions(batch_chunk_size=4))
    assert list(head.state_dict()) == list(lin.state_dict()) == ["weight", "bias"]
    for a, r in zip(head.state_dict().values(), lin.state_dict().values()):
        assert torch.equal(a, r)  # the same initialization
    other = torch.nn.Linear(16, 24)
    head.load_state_dict(other.state_dict())
    lin.load_state_dict(head.state_dict())
    x, target = torch.randn(7, 16), torch.randint(0, 24, (7,))
    torch.testing.assert_close(head(x, target),
                               TF.cross_entropy(other(x), target, label_smoothing=0.1))
    no_bias = bnn.LinearCrossEntropy(16, 24, bias=False)
    assert no_bias.bias is None and list(no_bias.state_dict()) == ["weight"]
    assert "label_smoothing=0.1" in repr(head) and "batch_chunk_size=4" in repr(head)


def test_module_from_linear_shares_parameters():
    lin = torch.nn.Linear(8, 12)
    cw = torch.rand(12) + 0.5
    head = bnn.LinearCrossEntropy.from_linear(lin, class_weight=cw, reduction="sum")
    assert head.weight is lin.weight and head.bias is lin.bias
    assert list(head.state_dict()) == ["weight", "bias"]  # class_weight is not state
    x, target = torch.randn(5, 8), torch.randint(0, 12, (5,))
    head(x, target).backward()
    expected = torch.autograd.grad(TF.cross_entropy(TF.linear(x, lin.weight, lin.bias), target,
                                                    weight=cw, reduction="sum"), lin.weight)[0]
    torch.testing.assert_close(lin.weight.grad, expected)


# --- the benchmark family (a tiny shape: the wiring, the columns and the plot)


def test_bench_rows_and_memory_plot(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib")  # --plot-memory
    from backprop_ext.__main__ import main
    from backprop_ext.benchmarks import bench_linear_cross_entropy as bench

    monkeypatch.setitem(bench.DEFAULT_SHAPES, "cpu", (96, 32, 500))
    monkeypatch.setitem(bench.SWEEP, "cpu", (16, 32))
    png, js = tmp_path / "memory.png", tmp_path / "bench.json"
    assert main(["bench", "--family", "linear_cross_entropy", "--device", "cpu", "--reps", "2",
                 "--json", str(js), "--plot-memory", str(png)]) == 0
    assert "peak MB" in capsys.readouterr().out
    rows = json.loads(js.read_text())["rows"]
    head = [r for r in rows if r["op"] == "linear_cross_entropy"]
    assert [r["direction"] for r in head] == ["fwd", "fwd+bwd"]
    assert head[1]["peak_bytes"] > 0 and head[1]["torch_peak_bytes"] > 0
    sweep = [r for r in rows if r["op"].startswith("linear_cross_entropy[chunk=")]
    assert [r["chunk"] for r in sweep] == [16, 32, 96]
    grads = (96 * 32 + 500 * 32) * 4
    assert all(r["grad_bytes"] == grads and r["ms"] > 0 and r["torch_ms"] > 0 for r in sweep)
    # Each block of 16 more rows costs its 16 x 500 logits; torch's step holds three 96 x 500.
    peaks = [r["peak_bytes"] for r in sweep]
    assert peaks[0] < peaks[1] < peaks[2] and peaks[0] - grads <= 16 * 500 * 4 + 96 * 64
    assert sweep[0]["torch_peak_bytes"] >= 3 * 96 * 500 * 4
    assert png.stat().st_size > 0


# --- bad input


_X, _W, _T = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
# (arguments, keywords, our exception, what our message says): the exception is torch's kind for
# the same mistake (checked against torch's own function where it has one).
_BAD_INPUT = {
    "in_features": ((torch.randn(3, 5), _W, _T), {}, RuntimeError,
                    r"expected input.shape\[-1\] == linear_weight.shape\[1\]"),
    "1-d weight": ((_X, torch.randn(4), _T), {}, RuntimeError,
                   r"expected linear_weight of shape \(num_classes, in_features\)"),
    "batch size": ((_X, _W, torch.tensor([0, 1])), {}, ValueError,
                   r"expected target of shape \(3,\)"),
    "target ndim": ((_X, _W, torch.zeros(3, 2, dtype=torch.long)), {}, RuntimeError,
                    r"expected target of shape \(3,\)"),
    "target dtype": ((_X, _W, _T.int()), {}, RuntimeError,
                     "expected class-index target of dtype int64"),
    "weight dtype": ((_X, _W.double(), _T), {}, RuntimeError,
                     r"same dtype, got torch\.float32 and torch\.float64"),
    "bias dtype": ((_X, _W, _T), {"linear_bias": torch.zeros(5, dtype=torch.float16)},
                   RuntimeError, "input and linear_bias to have the same dtype"),
    "bias shape": ((_X, _W, _T), {"linear_bias": torch.zeros(4)}, RuntimeError,
                   r"expected linear_bias of shape \(5,\)"),
    "class weight shape": ((_X, _W, _T), {"weight": torch.ones(4)}, RuntimeError,
                           r"expected weight of shape \(5,\)"),
    "class weight dtype": ((_X, _W, _T), {"weight": torch.ones(5, dtype=torch.long)},
                           RuntimeError, "floating-point weight"),
    "reduction": ((_X, _W, _T), {"reduction": "avg"}, ValueError, "reduction must be one of"),
    "label_smoothing range": ((_X, _W, _T), {"label_smoothing": 1.5}, RuntimeError,
                              r"label_smoothing must be in \[0, 1\]"),
    "label_smoothing type": ((_X, _W, _T), {"label_smoothing": "a"}, TypeError,
                             "expected label_smoothing to be a float, got str"),
    "integer input": ((_X.long(), _W.long(), _T), {}, RuntimeError,
                      "dtype float64, float32, float16 or bfloat16"),
    "0-d input": ((torch.tensor(1.0), _W[:, :1], torch.tensor(0)), {}, RuntimeError, "0-d"),
    "no classes": ((_X, _W[:0], _T), {}, RuntimeError, "at least one class"),
    "target list": ((_X, _W, [0, 1, 2]), {}, TypeError, "expected target to be a Tensor"),
    "target out of range": ((_X, _W, torch.tensor([0, 5, 1])), {}, IndexError,
                            "target 5 at position 1 is out of bounds"),
}
# Where torch's function answers otherwise: it takes 1-d or 2-d input only, raises
# AttributeError for a list, IndexError for no classes (from its loss, not its check).
_TORCH_DIFFERS = {"0-d input", "target list", "no classes"}


@pytest.mark.parametrize("case", list(_BAD_INPUT))
def test_rejects_bad_input(case):
    args, kwargs, kind, message = _BAD_INPUT[case]
    with pytest.raises(kind, match=message) as raised:
        BF.linear_cross_entropy(*args, **kwargs)
    assert "backprop_ext.linear_cross_entropy" in str(raised.value)
    torch_lce = getattr(TF, "linear_cross_entropy", None)
    if torch_lce is not None and case not in _TORCH_DIFFERS:
        with pytest.raises(Exception) as theirs:
            torch_lce(*args, **kwargs)
        # torch's NotImplementedError ("not implemented for 'Long'") is a RuntimeError
        assert isinstance(theirs.value, kind), f"torch's: {theirs.value!r}"


def test_rejects_bad_options():
    lce = BF.linear_cross_entropy
    with pytest.raises(ValueError, match="batch_chunk_size must be positive int"):
        lce(_X, _W, _T, options=BF.LinearCrossEntropyOptions(batch_chunk_size=0))
    with pytest.raises(TypeError, match="expected options to be a LinearCrossEntropyOptions"):
        lce(_X, _W, _T, options=4)
    with pytest.raises(IndexError, match=r"in rows \[2, 3\) of the input: .*target -3 at "
                       "position 0"):
        lce(_X, _W, torch.tensor([0, 1, -3]),
            options=BF.LinearCrossEntropyOptions(batch_chunk_size=2))


@pytest.mark.cuda
def test_rejects_mixed_devices():
    x, w, t = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    with pytest.raises(RuntimeError, match="expected linear_weight on cpu like input, got cuda"):
        BF.linear_cross_entropy(x, w.cuda(), t)
    with pytest.raises(RuntimeError, match="expected target on cuda:0 like input, got cpu"):
        BF.linear_cross_entropy(x.cuda(), w.cuda(), t)


@pytest.mark.cuda
def test_cuda_peak_memory_is_one_block_beyond_the_gradients():
    n, h, v, chunk = 4096, 256, 32000, 256
    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(v, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    target = torch.randint(0, v, (n,), device="cuda")

    def step():
        return torch.autograd.grad(_lce(x, w, target, chunk_size=chunk), (x, w))

    step()  # cuBLAS's workspace is allocated once, at the first GEMM: not the step's memory
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    grads = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    grad_bytes = sum(g.numel() * g.element_size() for g in grads)
    # The gradients, a block, O(N) vectors and the allocator's rounding (torch's: 3 N V 2 bytes).
    assert peak <= grad_bytes + chunk * v * 2 + 64 * n + (8 << 20), (peak, grad_bytes)


# --- torch 2.14's signature and Module


_HAS_TORCH_LCE = hasattr(TF, "linear_cross_entropy")


def _reference_lce(x, w, target, b=None, cw=None, **kw):
    if _HAS_TORCH_LCE:
        return TF.linear_cross_entropy(x, w, target, linear_bias=b, weight=cw, **kw)
    kw["ignore_index"] = -100 if kw.get("ignore_index") is None else kw["ignore_index"]
    return TF.cross_entropy(TF.linear(x, w, b), target, weight=cw, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(reduction="sum", label_smoothing=0.2),
                                dict(reduction="none", ignore_index=3), dict(ignore_index=None)])
def test_torch_signature_gives_torch_result(kw):
    x, w, b = _head(11, 6, 9, "cpu", torch.float64)
    target = _target((11,), 9, "cpu", ignore_every=4)
    if kw.get("ignore_index") == 3:
        target = target.clamp(min=0)  # a real class ignored, no -100
    cw = torch.rand(9, dtype=torch.float64) + 0.5
    leaves = [t.requires_grad_() for t in (x, w, b)]
    options = BF.LinearCrossEntropyOptions(batch_chunk_size=4)
    ours = BF.linear_cross_entropy(x, w, target, linear_bias=b, weight=cw, options=options, **kw)
    theirs = _reference_lce(x, w, target, b, cw, **kw)
    torch.testing.assert_close(ours, theirs)
    grads = torch.autograd.grad(ours.sum(), leaves)
    for g, r in zip(grads, torch.autograd.grad(theirs.sum(), leaves)):
        torch.testing.assert_close(g, r)


def test_signature_is_torchs():
    import inspect

    names = list(inspect.signature(BF.linear_cross_entropy).parameters)
    assert names == ["input", "linear_weight", "target", "linear_bias", "weight", "reduction",
                     "ignore_index", "label_smoothing", "options"]
    if _HAS_TORCH_LCE:
        theirs = inspect.signature(TF.linear_cross_entropy).parameters
        ours = inspect.signature(BF.linear_cross_entropy).parameters
        assert [(p.name, p.kind, p.default) for p in theirs.values()] == \
               [(p.name, p.kind, p.default) for p in ours.values()]


def test_old_spelling_says_what_to_write():
    x, w, t = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    with pytest.raises(TypeError, match=r"linear_bias=bias"):
        BF.linear_cross_entropy(x, w, t, torch.zeros(5))
    with pytest.raises(TypeError, match=r"class_weight= is no longer an argument.*write weight="):
        BF.linear_cross_entropy(x, w, t, class_weight=torch.ones(5))
    with pytest.raises(TypeError, match=r"chunk_size=.*batch_chunk_size"):
        BF.linear_cross_entropy(x, w, t, chunk_size=2)
    with pytest.raises(TypeError, match=r"write linear_bias="):
        BF.linear_cross_entropy(x, w, t, bias=torch.zeros(5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_probability_targets_as_torch(reduction):
    x, w, b = _head(7, 5, 6, "cpu", torch.float64)
    probs = torch.softmax(torch.randn(7, 6, dtype=torch.float64), 1)
    cw = torch.rand(6, dtype=torch.float64) + 0.5
    leaves = [t.requires_grad_() for t in (x, w, b)]
    kw = dict(reduction=reduction, label_smoothing=0.1)
    ours = BF.linear_cross_entropy(x, w, probs, linear_bias=b, weight=cw, **kw)
    theirs = TF.cross_entropy(TF.linear(x, w, b), probs, weight=cw, **kw)
    torch.testing.assert_close(ours, theirs)
    for g, r in zip(torch.autograd.grad(ours.sum(), leaves),
                    torch.autograd.grad(theirs.sum(), leaves)):
        torch.testing.assert_close(g, r)
    with pytest.raises(RuntimeError, match="ignore_index cannot be specified"):
        BF.linear_cross_entropy(x, w, probs, ignore_index=-100)


def test_k_dimensional_weight_as_torch():
    x = torch.randn(4, 5, dtype=torch.float64)
    w = torch.randn(6, 3, 5, dtype=torch.float64)
    target = torch.randint(0, 6, (4, 3))
    theirs = TF.cross_entropy(TF.linear(x, w.reshape(18, 5)).reshape(4, 6, 3), target)
    torch.testing.assert_close(BF.linear_cross_entropy(x, w, target), theirs)


def test_loss_module_is_torchs_drop_in():
    torch.manual_seed(5)
    kw = dict(bias=True, weight=torch.rand(9) + 0.5, label_smoothing=0.1, reduction="sum")
    ours = bnn.LinearCrossEntropyLoss(6, 9, **kw)
    assert list(ours.state_dict()) == ["weight", "linear.weight", "linear.bias"]
    x, target = torch.randn(8, 6), torch.randint(0, 9, (8,))
    expected = TF.cross_entropy(ours.linear(x), target, weight=ours.weight, label_smoothing=0.1,
                                reduction="sum")
    torch.testing.assert_close(ours(x, target), expected)
    if hasattr(torch.nn, "LinearCrossEntropyLoss"):
        torch.manual_seed(5)
        theirs = torch.nn.LinearCrossEntropyLoss(6, 9, **kw)
        assert isinstance(ours, torch.nn.LinearCrossEntropyLoss)
        assert repr(ours) == repr(theirs)
        ours.load_state_dict(theirs.state_dict())
        expected = theirs(x, target)
        torch.testing.assert_close(ours(x, target), expected)
        model = torch.nn.ModuleDict({"loss": theirs})
        bnn.convert(model)
        assert type(model["loss"]) is bnn.LinearCrossEntropyLoss
        torch.testing.assert_close(model["loss"](x, target), expected)
