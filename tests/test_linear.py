"""The linear family against torch's F.linear (+ F.<activation>): values and gradients in every
dtype, higher-order AD, tracing, autocast, memory, layouts, the Module and convert(), bad input."""

import os
import subprocess
import sys
import weakref

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

import backprop_ext
import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.checkpoint.memory import AllocatorPeak, cpu_peak_bytes
from backprop_ext.ops.linear import parse_activation
from backprop_ext.testing import (
    LINEAR_CASES,
    LinearCase,
    assert_matches,
    fake_cuda_autocast,
    jvp_of_gradient,
)

CASES = [pytest.param(c, id=c.label) for c in LINEAR_CASES]
ops = torch.ops.backprop_ext


def _make(m_shape, k, n, device, dtype, bias=True, scale=1.0):
    """x (*m_shape, k), weight (n, k), bias (n,) with torch.nn.Linear's scale, float64-drawn."""
    def rand(*shape, s=1.0):
        return (torch.randn(shape, dtype=torch.float64) * s).to(device=device, dtype=dtype)

    bound = 1 / max(k, 1) ** 0.5
    x = rand(*m_shape, k, s=scale)
    w = rand(n, k, s=2 * bound)
    b = rand(n, s=2 * bound) if bias else None
    return x, w, b


def _check_parity(case, x, w, b, **kwargs):
    """Forward and all three gradients: ours vs torch in the same dtype vs torch in float64."""
    grads = {}
    outs = []
    for kind in ("ours", "torch", "ref"):
        cast = (lambda t: t.double()) if kind == "ref" else (lambda t: t)
        leaves = [cast(t).detach().requires_grad_() if t is not None else None for t in (x, w, b)]
        fn = case.ours if kind == "ours" else case.torch
        y = fn(*leaves, **kwargs) if kind == "ours" else fn(*leaves)
        outs.append(y)
        g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        y.backward(g.to(device=y.device, dtype=y.dtype))
        grads[kind] = [t.grad if t is not None else None for t in leaves]
    y_ours, y_torch, y_ref = outs
    assert y_ours.dtype == x.dtype and y_ours.shape == y_ref.shape and y_ours.device == x.device
    assert y_ours.is_contiguous()
    assert_matches(y_ours, y_torch, y_ref)
    for o, t, r in zip(grads["ours"], grads["torch"], grads["ref"]):
        if r is not None:
            assert o.shape == r.shape and o.dtype == x.dtype
            assert_matches(o, t, r)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES)
def test_forward_backward_match_torch(case, bias, device, dtype):
    x, w, b = _make((5, 7), 33, 19, device, dtype, bias)
    _check_parity(case, x, w, b)


def _layout(kind, device, dtype):
    """(x, w, b) in the layouts and shapes that matter, for an in_features/out_features pair."""
    if kind == "1d":
        return _make((), 33, 19, device, dtype)
    if kind == "one_row":
        return _make((1,), 33, 19, device, dtype)
    if kind == "empty_batch":
        return _make((0,), 33, 19, device, dtype)
    if kind == "empty_3d":
        return _make((3, 0), 33, 19, device, dtype)
    if kind == "k0":  # no input features: the output is the bias
        return _make((4,), 0, 19, device, dtype)
    if kind == "n0":
        return _make((4,), 33, 0, device, dtype)
    if kind == "strided_input":
        x, w, b = _make((14,), 33, 19, device, dtype)
        return x[::2], w, b
    if kind == "transposed_input":  # dense but column-major
        x, w, b = _make((6,), 33, 19, device, dtype)
        return x.t().contiguous().t(), w, b
    if kind == "transposed_weight":  # weight tying with a (in, out) matrix
        x, w, b = _make((6,), 33, 19, device, dtype)
        return x, w.t().contiguous().t(), b
    if kind == "strided_bias":
        x, w, b = _make((6,), 33, 19, device, dtype)
        return x, w, torch.stack([b, b], 1)[:, 0]
    if kind == "tiles":  # several row and column tiles of the CPU backward pass
        return _make((300,), 24, 4100, device, dtype)
    raise ValueError(kind)


LAYOUTS = ["1d", "one_row", "empty_batch", "empty_3d", "k0", "n0", "strided_input",
           "transposed_input", "transposed_weight", "strided_bias", "tiles"]


@pytest.mark.parametrize("case", [LinearCase(), LINEAR_CASES[4]], ids=["none", "gelu"])
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_shapes_and_layouts_match_torch(kind, case, device, dtype):
    x, w, b = _layout(kind, device, dtype)
    _check_parity(case, x, w, b)


@pytest.mark.parametrize("case", CASES)
def test_recompute_preact_matches(case, device):
    x, w, b = _make((4, 6), 33, 19, device, torch.float32)
    _check_parity(case, x, w, b, recompute_preact=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_large_preactivations_in_half(dtype, device):
    # Pre-activations of +-1e4 (past every saturation and softplus's threshold) in half types.
    x, w, _ = _make((64,), 16, 24, device, dtype, bias=False, scale=0.01)
    b = (torch.tensor([1e4, -1e4, 30.0, -30.0] * 6, dtype=torch.float64)).to(device, dtype)
    for case in LINEAR_CASES:
        _check_parity(case, x, w, b)


# --- higher-order and forward-mode AD


def _f64(device, bias=True):
    """Small float64 leaves for gradcheck. The pre-activations are random, so none lies within
    gradcheck's step of relu's kink or softplus's threshold but with negligible probability."""
    x, w, b = _make((3, 4), 5, 6, device, torch.float64, bias, scale=2.0)
    return [t.requires_grad_() if t is not None else None for t in (x, 2 * w, b)]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(case, bias, device):
    x, w, b = _f64(device, bias)
    inputs = (x, w, b) if bias else (x, w)
    assert gradcheck(case.ours, inputs)
    assert gradgradcheck(case.ours, inputs)


@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck_recompute_preact(case, device):
    x, w, b = _f64(device)

    def fn(*args):
        return case.ours(*args, recompute_preact=True)

    assert gradcheck(fn, (x, w, b))
    assert gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_matches_torch_func_jvp(case, device):
    primals = [t.detach() for t in _f64(device)]
    tangents = [torch.randn_like(t) for t in primals]
    y, jvp = torch.func.jvp(case.ours, tuple(primals), tuple(tangents))
    y_ref, jvp_ref = torch.func.jvp(case.torch, tuple(primals), tuple(tangents))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(jvp, jvp_ref)
    # A tangent on the input only, and under recompute_preact.
    _, jvp = torch.func.jvp(lambda x: case.ours(x, *primals[1:], recompute_preact=True),
                            (primals[0],), (tangents[0],))
    _, jvp_ref = torch.func.jvp(lambda x: case.torch(x, *primals[1:]), (primals[0],),
                                (tangents[0],))
    torch.testing.assert_close(jvp, jvp_ref)


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_with_dual_tensors_under_no_grad(case, device):
    # Nothing requires grad, yet the tangents must flow (the op-only shortcut must not be taken).
    import torch.autograd.forward_ad as fwAD

    x, w, b = (t.detach() for t in _f64(device))
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    _, jvp_ref = torch.func.jvp(case.torch, (x, w, b), (tx, tw, torch.zeros_like(b)))
    with torch.no_grad(), fwAD.dual_level():
        y = case.ours(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), b)
        torch.testing.assert_close(fwAD.unpack_dual(y).tangent, jvp_ref)


@pytest.mark.parametrize("case", CASES)
def test_forward_over_reverse(case, device):
    # jvp of the gradient: exercises LinearBackwardFunction.jvp.
    primals = tuple(t.detach() for t in _f64(device))
    tangents = tuple(torch.randn_like(t) for t in primals)

    def grad_of(fn):
        return lambda *args: torch.func.grad(lambda *a: fn(*a).sum(), argnums=(0, 1, 2))(*args)

    _, ours = torch.func.jvp(grad_of(case.ours), primals, tangents)
    ref = jvp_of_gradient(grad_of(case.torch), primals, tangents)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)


# --- registered ops


@pytest.mark.parametrize("activation,p0,p1", [("none", 0.0, 0.0), ("relu", 0.0, 0.0),
                                              ("leaky_relu", 0.1, 0.0), ("gelu", 0.0, 0.0),
                                              ("gelu_tanh", 0.0, 0.0), ("silu", 0.0, 0.0),
                                              ("sigmoid", 0.0, 0.0), ("tanh", 0.0, 0.0),
                                              ("softplus", 1.5, 10.0)])
def test_opcheck(activation, p0, p1, device):
    x, w, b = _make((3, 4), 8, 6, device, torch.float32)
    for save_preact in (True, False):
        torch.library.opcheck(ops.linear_fwd.default, (x, w, b, activation, p0, p1, save_preact))
    torch.library.opcheck(ops.linear_fwd.default, (x.transpose(0, 1), w, None, activation, p0,
                                                   p1, True))
    out, preact = ops.linear_fwd(x, w, b, activation, p0, p1, True)
    saved = out if preact.numel() == 0 else preact
    g = torch.randn_like(out)
    for mask in ([True, True, True], [True, False, False], [False, True, True],
                 [False, False, True]):
        torch.library.opcheck(ops.linear_bwd.default, (g, x, w, saved, activation, p0, p1, mask))


def test_op_outputs_follow_save_preact():
    x, w, b = _make((3,), 8, 6, "cpu", torch.float32)
    for activation in ("gelu", "silu", "leaky_relu", "softplus", "gelu_tanh"):
        _, preact = ops.linear_fwd(x, w, b, activation, 0.01, 20.0, True)
        torch.testing.assert_close(preact, TF.linear(x, w, b))
        assert ops.linear_fwd(x, w, b, activation, 0.01, 20.0, False)[1].shape == (0,)
    for activation in ("none", "relu", "sigmoid", "tanh"):
        assert ops.linear_fwd(x, w, b, activation, 0.0, 0.0, True)[1].shape == (0,)
    g = torch.randn(3, 6)
    gx, gw, gb = ops.linear_bwd(g, x, w, torch.empty(0), "none", 0.0, 0.0, [False, True, False])
    assert gx.shape == (0,) and gw.shape == (6, 8) and gb.shape == (0,)


# --- torch.compile, autocast


def _mlp():
    return torch.nn.Sequential(
        bnn.Linear(16, 32, activation="gelu"), bnn.Linear(32, 32, activation=("leaky_relu", 0.1)),
        bnn.Linear(32, 24, activation="relu", recompute_preact=True),
        bnn.Linear(24, 24, bias=False, activation=("gelu", "tanh")),
        bnn.Linear(24, 8, activation="silu", recompute_preact=True), bnn.Linear(8, 4),
    )


def test_compile_fullgraph_matches_eager():
    model = _mlp()
    x = torch.randn(8, 16, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = model(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    params = [x, *model.parameters()]
    g_eager = torch.autograd.grad(y_eager.square().sum(), params)
    g_comp = torch.autograd.grad(y_comp.square().sum(), params)
    for a, b in zip(g_eager, g_comp):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager():
    model = _mlp()
    x = torch.randn(8, 16, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    y_eager, y_comp = model(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), [x, *model.parameters()])
    g_comp = torch.autograd.grad(y_comp.sum(), [x, *model.parameters()])
    for a, b in zip(g_eager, g_comp):
        torch.testing.assert_close(a, b)


def _autocast_matches_torch(device, dtype):
    lin = torch.nn.Linear(8, 6, device=device)
    x = torch.randn(4, 8, device=device)
    cast = [t.detach().to(dtype).double().requires_grad_() for t in (x, lin.weight, lin.bias)]
    for case in LINEAR_CASES:
        with torch.autocast(device, dtype=dtype):
            y_ours = case.ours(x, lin.weight, lin.bias)
            y_torch = case.torch(x, lin.weight, lin.bias)
        # The autocast dtype; float32 where torch's autocast runs the activation in float32
        # (softplus under CUDA autocast).
        assert y_ours.dtype == y_torch.dtype and y_torch.dtype in (dtype, torch.float32)
        y_ref = case.torch(*cast)  # the autocast inputs, in float64
        assert_matches(y_ours, y_torch, y_ref)
        g_ours = torch.autograd.grad(y_ours.float().sum(), lin.parameters())
        g_torch = torch.autograd.grad(y_torch.float().sum(), lin.parameters())
        g_ref = torch.autograd.grad(y_ref.sum(), cast[1:])
        for a, t, r in zip(g_ours, g_torch, g_ref):
            assert a.dtype == t.dtype == torch.float32  # the parameters' own dtype
            assert_matches(a, t, r.float())
    with torch.autocast(device, dtype=dtype):  # float64 is left alone, as torch does
        assert BF.linear(x.double(), lin.weight.double()).dtype == torch.float64


def test_cuda_autocast_dtypes_on_fake_tensors():
    # The dtypes under CUDA autocast, checked on any machine (testing.fake_cuda_autocast). torch
    # runs softplus in float32 there (a float32 result) and every other activation in the
    # autocast dtype; ours follows, alone and fused into linear.
    # test_autocast_cuda_matches_torch checks values and gradients on a GPU.
    dtypes = {}
    with fake_cuda_autocast(torch.float16):
        x = torch.empty(4, 8, device="cuda")
        w, b = torch.empty(6, 8, device="cuda"), torch.empty(6, device="cuda")
        for case in LINEAR_CASES:
            y_ours, y_torch = case.ours(x, w, b), case.torch(x, w, b)
            assert y_ours.dtype == y_torch.dtype, case.label
            dtypes[case.label] = y_ours.dtype
            if case.act is not None:
                z = TF.linear(x, w, b)
                assert case.act.ours(z).dtype == case.act.torch(z).dtype, case.act.label
    assert dtypes["linear+softplus"] == torch.float32 and dtypes["linear"] == torch.float16


def test_autocast_cpu_matches_torch():
    _autocast_matches_torch("cpu", torch.bfloat16)


@pytest.mark.cuda
def test_autocast_cuda_matches_torch():
    _autocast_matches_torch("cuda", torch.float16)


# --- memory, inputs, determinism


def _saved_shapes(fn):
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, shapes


@pytest.mark.parametrize("activation,recompute,kept", [
    (None, False, []), ("relu", False, [(9, 7)]), ("tanh", False, [(9, 7)]),
    ("gelu", False, [(9, 7)]), ("gelu", True, []), ("silu", True, []),
    (("leaky_relu", 0.1), False, [(9, 7)]),
])
def test_saves_only_what_backward_needs(activation, recompute, kept):
    x = torch.randn(9, 5, requires_grad=True)
    lin = bnn.Linear(5, 7, activation=activation, recompute_preact=recompute)
    out, shapes = _saved_shapes(lambda: lin(x))
    # Always input and weight; beyond them at most one (M, N) tensor: never preact and output both.
    assert [s for s in shapes if s == (9, 7)] == kept
    assert (9, 5) in shapes and (7, 5) in shapes
    assert all(s in ((9, 5), (7, 5), (7,), (9, 7)) for s in shapes), shapes
    g = torch.randn(9, 7)
    grads = torch.autograd.grad(out, [x, lin.weight, lin.bias], g)
    z = TF.linear(x, lin.weight, lin.bias)
    name, p0, p1 = parse_activation(activation)
    ref = z if name == "none" else backprop_ext.ops.activation.activation(z, name, p0, p1)
    refs = torch.autograd.grad(ref, [x, lin.weight, lin.bias], g)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("activation,recompute", [
    (None, False), ("relu", False), (("gelu", "tanh"), False), ("silu", True),
    (("leaky_relu", 0.1), False)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(9, 5), (2, 4, 5), (5,)])
def test_backward_through_hooks_frees_the_input_first_same_bits(activation, recompute, bias,
                                                                  shape):
    # Saved through hooks, the input is unpacked in backward as a tensor of its own; backward
    # then takes the weight gradient first and drops the input before making the input
    # gradient (linear_preact_bwd, linear_bwd for the weight, one product): the same bits as the
    # one linear_bwd call it makes otherwise.
    torch.manual_seed(0)
    lin = bnn.Linear(5, 7, bias=bias, activation=activation, recompute_preact=recompute)
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(*shape[:-1], 7)
    wrt = [x, *lin.parameters()]
    plain = torch.autograd.grad(lin(x), wrt, g)
    unpacked = []

    def unpack(t):
        unpacked.append(weakref.ref(t := t.clone()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
        out = lin(x)
    hooked = torch.autograd.grad(out, wrt, g)
    for a, b in zip(hooked, plain):
        assert torch.equal(a, b)
    assert unpacked and all(r() is None for r in unpacked)  # nothing holds them after backward


@pytest.mark.parametrize("activation", ["gelu_tanh", "relu", "silu"])
def test_broadcast_gradient_becomes_the_preactivation_gradient(activation):
    # sum() sends back one value broadcast over the output: the fused backward copies it out once
    # and writes the pre-activation's gradient over that copy (the same bits as from a dense
    # gradient; one (M, N) buffer, not two).
    ops = torch.ops.backprop_ext
    x, w, z = torch.randn(2, 32, 16), torch.randn(24, 16), torch.randn(2, 32, 24)
    g = torch.tensor(0.5).expand(2, 32, 24)
    for mask in ([True, True, True], [False, True, True], [True, False, False]):
        ours = ops.linear_bwd(g, x, w, z, activation, 0.0, 0.0, mask)
        dense = ops.linear_bwd(g.contiguous(), x, w, z, activation, 0.0, 0.0, mask)
        assert all(torch.equal(a, b) for a, b in zip(ours, dense))
    for want_bias in (True, False):
        ours = ops.linear_preact_bwd(g, z, activation, 0.0, 0.0, want_bias)
        dense = ops.linear_preact_bwd(g.contiguous(), z, activation, 0.0, 0.0, want_bias)
        assert all(torch.equal(a, b) for a, b in zip(ours, dense))
    with AllocatorPeak() as mem:
        gz, _ = ops.linear_preact_bwd(g, z, activation, 0.0, 0.0, False)
    assert mem.peak == gz.untyped_storage().nbytes()


def test_backward_drops_a_rebuilt_input_before_the_input_gradient():
    # Selective checkpointing rebuilds each Linear's input from the kept GEMM output: with the
    # input dropped before the input gradient is allocated, the peak is the 8 kept GEMM outputs,
    # the model's output (the caller holds it) and backward's working set, the activation's
    # gradient and then the input gradient, and a weight gradient; torch's Linear holds the
    # rebuilt input one tensor longer.
    batch, width, depth = 256, 64, 8
    act = batch * width * 4
    x, g = torch.randn(batch, width), torch.randn(batch, width)  # g: the loss's gradient

    def peak(linear):
        torch.manual_seed(0)
        mods = [m for _ in range(depth)
                for m in (linear(width, width), bnn.GELU(approximate="tanh"))]
        model = bnn.CheckpointedSequential(*mods, policy="selective")
        model(x).backward(g)  # gradients allocated, as a training loop's second step finds them
        return cpu_peak_bytes(lambda: model(x).backward(g))

    ours, torchs = peak(bnn.Linear), peak(torch.nn.Linear)
    assert ours <= (8 + 1 + 1 + 0.5) * act
    assert torchs - ours >= 0.75 * act


class _LinearBwdMasks(TorchDispatchMode):
    """Records the output_mask of every linear_bwd call."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.backprop_ext.linear_bwd.default:
            self.masks.append(tuple(args[-1]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("activation", [None, "gelu"])
def test_backward_computes_only_the_gradients_the_pass_uses(activation):
    # autograd.grad(out, inputs) runs only the paths to `inputs`: as torch's own matrix product,
    # the layer then skips the GEMMs of the gradients nobody receives; .backward() takes all.
    x = torch.randn(6, 5, requires_grad=True)
    lin = bnn.Linear(5, 4, activation=activation)
    h = x * 2  # an intermediate: its gradient is captured, not accumulated
    out = lin(h).sum()
    expected = torch.autograd.grad(
        (TF.gelu(TF.linear(h, lin.weight, lin.bias)) if activation else
         TF.linear(h, lin.weight, lin.bias)).sum(), [x, h, lin.weight, lin.bias],
        retain_graph=True)
    cases = [([x], (True, False, False)), ([h], (True, False, False)),
             ([lin.weight], (False, True, False)), ([lin.bias], (False, False, True)),
             ([lin.weight, x], (True, True, False))]
    for inputs, mask in cases:
        with _LinearBwdMasks() as rec:
            grads = torch.autograd.grad(out, inputs, retain_graph=True)
        assert rec.masks == [mask], inputs
        for g, t in zip(grads, inputs):
            ref = expected[[id(a) for a in (x, h, lin.weight, lin.bias)].index(id(t))]
            torch.testing.assert_close(g, ref)
    with _LinearBwdMasks() as rec:
        out.backward(inputs=[lin.weight])
    assert rec.masks == [(False, True, False)] and x.grad is None and lin.bias.grad is None
    with _LinearBwdMasks() as rec:
        lin(h).sum().backward()
    assert rec.masks == [(True, True, True)]


def test_no_grad_keeps_no_preact():
    x = torch.randn(9, 5)
    lin = bnn.Linear(5, 7, activation="gelu")
    with torch.no_grad():
        out = lin(x)
    assert out.grad_fn is None
    torch.testing.assert_close(out, TF.gelu(TF.linear(x, lin.weight, lin.bias)))


def test_inputs_and_saved_tensors_are_not_modified(device):
    for case in LINEAR_CASES:
        for recompute in (False, True):
            x, w, b = _make((6,), 9, 11, device, torch.float32)
            leaves = [t.requires_grad_() for t in (x, w, b)]
            before = [t.detach().clone() for t in leaves]
            y = case.ours(*leaves, recompute_preact=recompute)
            y_before = y.detach().clone()
            g = torch.randn_like(y)
            g_before = g.clone()
            y.backward(g)
            for t, t0 in zip(leaves, before):
                assert torch.equal(t.detach(), t0), case.label
            assert torch.equal(y.detach(), y_before), case.label
            assert torch.equal(g, g_before), case.label


def test_expanded_grad_output():
    # y.sum() sends an expanded (stride 0) gradient.
    for case in LINEAR_CASES:
        x, w, b = _make((5,), 9, 11, "cpu", torch.float64)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        grads = torch.autograd.grad(case.ours(*leaves).sum(), leaves)
        refs = torch.autograd.grad(case.torch(*leaves).sum(), leaves)
        for a, r in zip(grads, refs):
            torch.testing.assert_close(a, r)


def test_bias_grad_is_deterministic_across_thread_counts():
    x, w, b = _make((3000,), 8, 4100, "cpu", torch.float32)
    w.requires_grad_()
    b.requires_grad_()
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            y = BF.linear(x, w, b, activation="gelu")
            results.append(torch.autograd.grad(y, [b], torch.ones_like(y))[0])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], r) for r in results[1:])


def test_bias_grad_accuracy_on_long_columns():
    # 100k rows summed per bias element: the two-level sum keeps it within torch's error.
    x, w, b = _make((100_000,), 4, 8, "cpu", torch.float32)
    _check_parity(LINEAR_CASES[4], x, w, b)


# --- activation argument


def test_parse_activation_forms():
    assert parse_activation(None) == ("none", 0.0, 0.0)
    assert parse_activation("gelu") == ("gelu", 0.0, 0.0)
    assert parse_activation("gelu_tanh") == ("gelu_tanh", 0.0, 0.0)
    assert parse_activation(("gelu", "tanh")) == ("gelu_tanh", 0.0, 0.0)
    assert parse_activation(("gelu", {"approximate": "none"})) == ("gelu", 0.0, 0.0)
    assert parse_activation("leaky_relu") == ("leaky_relu", 0.01, 0.0)
    assert parse_activation(("leaky_relu", 0.2)) == ("leaky_relu", 0.2, 0.0)
    assert parse_activation("softplus") == ("softplus", 1.0, 20.0)
    assert parse_activation(("softplus", 2.0)) == ("softplus", 2.0, 20.0)
    assert parse_activation(("softplus", 2.0, {"threshold": 5.0})) == ("softplus", 2.0, 5.0)
    assert parse_activation(["relu"]) == ("relu", 0.0, 0.0)


@pytest.mark.parametrize("spec,exc,match", [
    ("swish", ValueError, "unknown activation 'swish'"),
    (("relu", 0.1), ValueError, "takes 0 parameter"),
    (("softplus", 1.0, 2.0, 3.0), ValueError, "takes 2 parameter"),
    (("gelu", "fast"), ValueError, "approximate must be 'none' or 'tanh', got 'fast'"),
    (("leaky_relu", {"slope": 0.1}), ValueError, "no parameter 'slope'"),
    (torch.nn.GELU(), TypeError, "activation must be None, a name"),
])
def test_rejects_bad_activation(spec, exc, match):
    x, w, b = _make((2,), 3, 4, "cpu", torch.float32)
    with pytest.raises(exc, match=match):
        BF.linear(x, w, b, activation=spec)


# --- bad input


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rejects_bad_shapes(compiled):
    fn = BF.linear
    if compiled:
        torch._dynamo.reset()
        fn = torch.compile(BF.linear, fullgraph=True, backend="eager", dynamic=False)
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match=r"input.shape\[-1\] == weight.shape\[1\].*"
                                           r"\[3, 5\].*\[6, 4\]"):
        fn(x, torch.randn(6, 4))
    with pytest.raises(RuntimeError, match=r"at least 1 dimension, but got a 0-d tensor"):
        fn(torch.tensor(1.0), torch.randn(6, 1))
    with pytest.raises(RuntimeError, match=r"weight of shape \(out_features, in_features\), "
                                           r"but got shape \[5\]"):
        fn(x, torch.randn(5))
    with pytest.raises(RuntimeError, match=r"bias of shape \(out_features,\) = \(6,\), but got "
                                           r"shape \[6, 1\]"):
        fn(x, torch.randn(6, 5), torch.randn(6, 1))
    with pytest.raises(RuntimeError, match=r"bias of shape \(out_features,\) = \(6,\), but got "
                                           r"shape \[7\]"):
        fn(x, torch.randn(6, 5), torch.randn(7))


def test_rejects_bad_dtypes():
    x = torch.randn(3, 5)
    with pytest.raises(RuntimeError, match="input and weight to have the same dtype, but got "
                                           "(Float and Double|torch.float32 and torch.float64)"):
        BF.linear(x, torch.randn(6, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="input and bias to have the same dtype"):
        BF.linear(x, torch.randn(6, 5), torch.randn(6, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="expected input to be a float64, float32, float16 or "
                                           "bfloat16 tensor"):
        BF.linear(torch.ones(3, 5, dtype=torch.int64), torch.ones(6, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"linear\(\): argument 'weight' \(position 2\) must be "
                                        "Tensor, not list"):
        BF.linear(x, [[1.0] * 5])
    with pytest.raises(RuntimeError, match="linear_bwd: expected grad_output of shape"):
        ops.linear_bwd(torch.randn(3, 7), x, torch.randn(6, 5), torch.empty(0), "none", 0.0, 0.0,
                       [True, True, True])


@pytest.mark.cuda
def test_rejects_mixed_devices():
    x = torch.randn(3, 5, device="cuda")
    with pytest.raises(RuntimeError, match="input and weight to be on the same device"):
        BF.linear(x, torch.randn(6, 5))
    with pytest.raises(RuntimeError, match="input and bias to be on the same device"):
        BF.linear(x, torch.randn(6, 5, device="cuda"), torch.randn(6))


# --- the Module and convert


def test_module_is_a_torch_linear():
    torch.manual_seed(3)
    ours = bnn.Linear(7, 5)
    torch.manual_seed(3)
    theirs = torch.nn.Linear(7, 5)
    assert isinstance(ours, torch.nn.Linear)
    assert repr(ours) == repr(theirs)
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    x = torch.randn(4, 7)
    torch.testing.assert_close(ours(x), theirs(x))
    fused = bnn.Linear(7, 5, bias=False, activation=("leaky_relu", 0.2), dtype=torch.float64)
    assert repr(fused) == ("Linear(in_features=7, out_features=5, bias=False, "
                           "activation=('leaky_relu', 0.2))")
    assert fused.weight.dtype == torch.float64 and fused.bias is None
    with pytest.raises(ValueError, match="unknown activation"):
        bnn.Linear(3, 4, activation="swish")


def test_state_dicts_load_both_ways():
    ours, theirs = bnn.Linear(6, 3, activation="gelu"), torch.nn.Linear(6, 3)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(ours(x), TF.gelu(theirs(x)))
    theirs = torch.nn.Linear(6, 3)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), TF.gelu(theirs(x)))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight", "bias"]


def _model():
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.GELU(approximate="tanh"),
        torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LeakyReLU(0.3), torch.nn.Dropout(0.0)),
        torch.nn.Linear(8, 8), torch.nn.Softplus(beta=2.0, threshold=5.0),
        torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True), torch.nn.Linear(8, 2),
    )


def test_convert_rebadges_linear():
    model = _model()
    keys = list(model.state_dict())
    x = torch.randn(3, 4)
    expected = model(x)
    assert bnn.convert(model) is model
    assert type(model[0]) is bnn.Linear and model[0].activation is None
    assert type(model[1]) is bnn.GELU and type(model[2][0]) is bnn.Linear
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected)


def test_convert_fuse_folds_activations_into_linear():
    model = _model()
    keys = list(model.state_dict())
    params = [p.data_ptr() for p in model.parameters()]
    x = torch.randn(3, 4)
    expected = model(x)
    bnn.convert(model, fuse=True)
    assert model[0].activation == "gelu_tanh" and type(model[1]) is torch.nn.Identity
    assert model[2][0].activation == ("leaky_relu", 0.3) and type(model[2][1]) is torch.nn.Identity
    assert model[3].activation == ("softplus", 2.0, 5.0)
    assert model[5].activation == "relu" and type(model[6]) is torch.nn.Identity
    assert model[7].activation is None
    assert list(model.state_dict()) == keys
    assert [p.data_ptr() for p in model.parameters()] == params
    torch.testing.assert_close(model(x), expected)
    # A converted model's state_dict still loads into the original architecture.
    _model().load_state_dict(model.state_dict())


def test_convert_fuse_leaves_hooked_and_subclassed_modules():
    class MyReLU(torch.nn.ReLU):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3),
                                MyReLU(), torch.nn.Linear(3, 3), torch.nn.Tanh())
    model[5].register_forward_hook(lambda m, i, o: None)
    bnn.convert(model, fuse=True)
    assert model[0].activation == "relu"
    assert model[2].activation is None and type(model[3]) is MyReLU
    assert model[4].activation is None and type(model[5]) is bnn.Tanh


# --- CUDA only


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", [(8192, 64, 48), (37, 33, 19), (300, 64, 1001)],
                         ids=["tall", "odd", "odd_n"])
def test_cuda_bias_grad_reduction(case, shape):
    # Many row splits (tall), the scalar path (odd sizes), and a grid of column strips.
    m, k, n = shape
    x, w, b = _make((m,), k, n, "cuda", torch.bfloat16)
    _check_parity(case, x, w, b)


@pytest.mark.cuda
def test_cuda_misaligned_operands():
    base = torch.randn(8 * 64 + 1, device="cuda", dtype=torch.bfloat16)
    x = base[1:].view(8, 64)  # 2-byte offset: not 16-byte aligned
    w = torch.randn(40, 64, device="cuda", dtype=torch.bfloat16) / 8
    b = torch.randn(40, device="cuda", dtype=torch.bfloat16)
    for case in LINEAR_CASES:
        _check_parity(case, x, w, b)


@pytest.mark.cuda
def test_cuda_respects_allow_tf32():
    x, w, b = _make((64,), 256, 48, "cuda", torch.float32)
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for flag in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = flag
            ours = BF.linear(x, w, b, activation="gelu")
            ref = TF.gelu(TF.linear(x.double(), w.double(), b.double()))
            err = (ours.double() - ref).abs().max().item()
            assert (err < 1e-4) if not flag else (err < 5e-2), (flag, err)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


_LT_EPILOGUE_SCRIPT = """
import torch, backprop_ext
from backprop_ext.testing import LINEAR_CASES, compare
bad = []
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    x = torch.randn(70, 64, dtype=torch.float64)
    w = torch.randn(48, 64, dtype=torch.float64) / 8
    b = torch.randn(48, dtype=torch.float64)
    for case in LINEAR_CASES:
        for bias in (b, None):
            outs = []
            for dt, fn in ((dtype, case.ours), (dtype, case.torch), (torch.float64, case.torch)):
                leaves = [t.to("cuda", dt).requires_grad_() for t in (x, w, bias) if t is not None]
                y = fn(*leaves)
                y.square().sum().backward()
                outs.append([y] + [t.grad for t in leaves])
            for a, t, r in zip(*outs):
                c = compare(a, t, r)
                if not c.ok:
                    bad.append(f"{case.label} {dtype} bias={bias is not None}: {c.message}")
assert not bad, bad
print("ok")
"""


@pytest.mark.cuda
def test_cuda_cublaslt_activation_epilogues():
    env = dict(os.environ, BACKPROP_EXT_LINEAR_EPILOGUE="cublaslt")
    out = subprocess.run([sys.executable, "-c", _LT_EPILOGUE_SCRIPT], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu", "softplus", "leaky_relu"])
def test_fused_output_is_the_activation_of_the_kept_preactivation(name, dtype):
    # Bit for bit: what lets a checkpoint rebuild the output from the kept pre-activation. The
    # odd width puts columns in the last partial vector of every row.
    x = torch.randn(9, 21, dtype=torch.float64).to(dtype)
    w = (torch.randn(37, 21, dtype=torch.float64) / 5).to(dtype)
    b = torch.randn(37, dtype=torch.float64).to(dtype)
    p0, p1 = backprop_ext.ops.activation.SPECS[name].floats({})
    y, z = ops.linear_fwd(x, w, b, name, p0, p1, True)
    assert torch.equal(y, ops.activation_fwd(z, name, p0, p1))
