"""The gated family against torch's f(gate) * up: values, both gradients, higher-order AD,
tracing, layouts, what backward keeps, bad input; GatedMLP against transformers' LlamaMLP."""

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.ops.activation import ACTIVATIONS, SPECS
from backprop_ext.testing import (
    ActivationCase,
    activation_case,
    assert_matches,
    fake_cuda_autocast,
    jvp_of_gradient,
)

ops = torch.ops.backprop_ext

# Every row of the activation table can gate; SwiGLU and GeGLU are the ones models use.
ROWS = [pytest.param(name, id=name) for name in ACTIVATIONS]
GATES = [("swiglu", BF.swiglu, lambda g, u: TF.silu(g) * u),
         ("geglu", BF.geglu, lambda g, u: TF.gelu(g) * u),
         ("geglu_tanh", lambda g, u: BF.geglu(g, u, approximate="tanh"),
          lambda g, u: TF.gelu(g, approximate="tanh") * u)]
GATE_IDS = [g[0] for g in GATES]


def _ours_and_torch(name):
    """Our gated() with the row `name` and torch's f(gate) * up (the reference formula where
    torch lacks f)."""
    case: ActivationCase = activation_case(name)
    activation = (case.name, dict(case.kwargs))
    return (lambda g, u: BF.gated(g, u, activation)), (lambda g, u: case.torch(g) * u)


def _inputs(shape, device, dtype, scale=3.0):
    gen = torch.Generator().manual_seed(7)
    g = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(device, dtype)
    u = torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    return g, u


def _parity(ours, theirs, gate, up):
    # Leaves on the inputs' own storage (no copy): a view's offset (alignment) reaches the kernels.
    leaves = [[t.detach().requires_grad_() for t in (gate, up)] for _ in range(2)]
    ref = [t.detach().double().requires_grad_() for t in (gate, up)]
    outs = [ours(*leaves[0]), theirs(*leaves[1]), theirs(*ref)]
    assert outs[0].dtype == gate.dtype and outs[0].shape == outs[2].shape
    assert_matches(*outs)
    grad = torch.randn(outs[2].shape, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(3))
    grads = [torch.autograd.grad(y, xs, grad.to(y.dtype).to(y.device))
             for y, xs in zip(outs, (*leaves, ref))]
    for i in range(2):
        assert_matches(grads[0][i], grads[1][i], grads[2][i])


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7,), (4097,), (5, 7, 3)],
                         ids=["0d", "empty", "one", "7", "4097", "5x7x3"])
def test_forward_backward_match_torch(name, shape, device, dtype):
    _parity(*_ours_and_torch(name), *_inputs(shape, device, dtype))


@pytest.mark.parametrize("gate", GATES, ids=GATE_IDS)
def test_public_functions(gate, device, dtype):
    _, ours, theirs = gate
    _parity(ours, theirs, *_inputs((33, 65), device, dtype))


@pytest.mark.parametrize("layout", ["transposed", "strided", "mixed", "broadcast"])
def test_layouts(layout, device):
    g, u = _inputs((12, 10), device, torch.float32)
    if layout == "transposed":  # dense, walked in place; the output keeps the strides
        g, u = g.t(), u.t()
    elif layout == "strided":
        g, u = g[::2], u[::2]
    elif layout == "mixed":  # one dense, one not: both made contiguous
        g, u = g.t(), u.t().contiguous()
    else:
        u = u[:1]
    _parity(BF.swiglu, lambda a, b: TF.silu(a) * b, g, u)
    if layout == "transposed":
        assert BF.swiglu(g, u).stride() == g.stride()


def test_mixed_dtypes_promote_as_torch():
    g, u = _inputs((9,), "cpu", torch.float32)
    y = BF.swiglu(g.bfloat16(), u)
    assert y.dtype == (TF.silu(g.bfloat16()) * u).dtype == torch.float32


@pytest.mark.parametrize("name", ROWS)
def test_gradcheck_and_gradgradcheck(name, device):
    ours, _ = _ours_and_torch(name)
    g, u = _inputs((4, 5), device, torch.float64, 2.0)
    g = g + 0.1 * torch.sign(g)  # off the kinks, where finite differences straddle two branches
    g, u = g.requires_grad_(), u.requires_grad_()
    assert gradcheck(ours, (g, u))
    assert gradgradcheck(ours, (g, u))


@pytest.mark.parametrize("name", ROWS)
def test_forward_mode_and_forward_over_reverse(name, device):
    ours, theirs = _ours_and_torch(name)
    primals = _inputs((6, 5), device, torch.float64, 2.0)
    tangents = _inputs((6, 5), device, torch.float64, 1.0)[::-1]
    y, jvp = torch.func.jvp(ours, primals, tangents)
    y_ref, jvp_ref = torch.func.jvp(theirs, primals, tangents)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(jvp, jvp_ref)

    def grad_of(fn):
        return lambda *a: torch.func.grad(lambda *b: fn(*b).sum(), argnums=(0, 1))(*a)

    _, hvp = torch.func.jvp(grad_of(ours), primals, tangents)
    hvp_ref = jvp_of_gradient(grad_of(theirs), primals, tangents)
    for a, b in zip(hvp, hvp_ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh", "relu", "sigmoid"])
def test_opcheck(name, device):
    p0, p1 = SPECS[name].floats({})
    for g, u in (_inputs((3, 4), device, torch.float32),
                 tuple(t.t() for t in _inputs((4, 6), device, torch.float32))):
        d = torch.randn_like(g)
        torch.library.opcheck(ops.gated_fwd.default, (g, u, name, p0, p1))
        torch.library.opcheck(ops.gated_bwd.default, (d, g, u, name, p0, p1))


def test_compile_fullgraph_matches_eager():
    def fn(g, u):
        return BF.swiglu(g, u) + BF.geglu(g, u, approximate="tanh")

    g, u = (t.requires_grad_() for t in _inputs((8, 16), "cpu", torch.float32))
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = fn(g, u), compiled(g, u)
    torch.testing.assert_close(y_comp, y_eager)
    for a, b in zip(torch.autograd.grad(y_eager.sum(), (g, u)),
                    torch.autograd.grad(y_comp.sum(), (g, u))):
        torch.testing.assert_close(a, b)


def test_autocast_cpu_matches_torch():
    lin_g, lin_u = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours = BF.swiglu(lin_g(x), lin_u(x))
        y_torch = TF.silu(lin_g(x)) * lin_u(x)
    assert y_ours.dtype == y_torch.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours, y_torch)
    g_ours = torch.autograd.grad(y_ours.float().sum(), lin_g.weight)[0]
    g_torch = torch.autograd.grad(y_torch.float().sum(), lin_g.weight)[0]
    torch.testing.assert_close(g_ours, g_torch, rtol=2e-2, atol=2e-2)


def test_backward_keeps_gate_and_up_only():
    g, u = (t.requires_grad_() for t in _inputs((64, 32), "cpu", torch.float32))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        BF.swiglu(g * 1, u * 1)
    assert len(saved) == 2  # gate and up
    torch_saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: torch_saved.append(t) or t,
                                                  lambda t: t):
        TF.silu(g * 1) * (u * 1)
    assert len(torch_saved) == 3  # gate (silu's input), silu's output, up


def test_inputs_are_not_modified():
    g, u = _inputs((33,), "cpu", torch.float32)
    before = (g.clone(), u.clone())
    g.requires_grad_(), u.requires_grad_()
    grad = torch.randn(33)
    keep = grad.clone()
    BF.swiglu(g, u).backward(grad)
    assert torch.equal(g.detach(), before[0]) and torch.equal(u.detach(), before[1])
    assert torch.equal(grad, keep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_value_rounds_the_same_wherever_it_sits(dtype):
    g, u = _inputs((67,), "cpu", dtype)
    d = _inputs((67,), "cpu", dtype, 1.0)[1]
    whole = ops.gated_fwd(g, u, "silu")
    alone = torch.cat([ops.gated_fwd(g[i:i + 1], u[i:i + 1], "silu") for i in range(67)])
    assert torch.equal(whole, alone)
    whole = ops.gated_bwd(d, g, u, "gelu")
    alone = [ops.gated_bwd(d[i:i + 1], g[i:i + 1], u[i:i + 1], "gelu") for i in range(67)]
    for k in range(2):
        assert torch.equal(whole[k], torch.cat([a[k] for a in alone]))


def test_rejects_bad_input():
    g, u = torch.randn(3), torch.randn(3)
    with pytest.raises(TypeError, match="expected gate and up of dtype float64, float32"):
        BF.swiglu(g.long(), u)  # torch would promote to float: silu of a long raises
    with pytest.raises(RuntimeError, match="swiglu: expected gate to be a float64, float32"):
        BF.swiglu(g.long(), u.long())
    with pytest.raises(TypeError, match=r"swiglu\(\): argument 'gate' \(position 1\) must be "
                                        "Tensor, not list"):
        BF.swiglu([1.0], u)
    with pytest.raises(ValueError, match="activation must be a name"):
        BF.gated(g, u, None)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        BF.gated(g, u, "nope")
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        BF.geglu(g, u, approximate="fast")
    with pytest.raises(RuntimeError, match=r"gated_fwd: expected gate and up to have the same "
                                           r"shape, but got \[3\] and \[4\]"):
        ops.gated_fwd(g, torch.randn(4), "silu")
    with pytest.raises(RuntimeError,
                       match="gated_bwd: expected grad and up to have the same dtype"):
        ops.gated_bwd(g, g, u.double(), "silu")


def test_cuda_autocast_dtypes_on_fake_tensors():
    # As test_linear's: under CUDA autocast torch's f(gate) * up is float32 where torch runs f in
    # float32 (softplus: its product promotes) and in the inputs' dtype otherwise; ours the same.
    # Checked on any machine (testing.fake_cuda_autocast).
    dtypes = {}
    with fake_cuda_autocast(torch.float16):
        g, u = torch.empty(4, 8, device="cuda").half(), torch.empty(4, 8, device="cuda").half()
        for name in ACTIVATIONS:
            ours, theirs = _ours_and_torch(name)
            dtypes[name] = ours(g, u).dtype
            assert dtypes[name] == theirs(g, u).dtype, name
    assert dtypes["softplus"] == torch.float32 and dtypes["silu"] == torch.float16


@pytest.mark.cuda
def test_rejects_mixed_devices():
    with pytest.raises(RuntimeError, match="same device"):
        ops.gated_fwd(torch.randn(3), torch.randn(3, device="cuda"), "silu")


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [1, 3])
def test_cuda_misaligned_pointers(offset):
    base_g, base_u = _inputs((4099,), "cuda", torch.bfloat16)
    gate, up = base_g[offset:], base_u[offset:]
    assert gate.data_ptr() % 16 and up.data_ptr() % 16  # the element-by-element path
    _parity(BF.swiglu, lambda a, b: TF.silu(a) * b, gate, up)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_lengths_about_the_tile(dtype, offset):
    # Lengths about the CUDA elementwise loop's boundaries (a 16-byte pack of 2, 4 or 8 elements,
    # a thread's 8 elements, a block's tile of 1024 elements, a last tile partly full), from an
    # aligned start and from a misaligned one; the backward writes two outputs.
    for n in (1, 3, 8, 9, 1023, 1024, 1025, 2056, 5 * 1024 + 13):
        base_g, base_u = _inputs((n + offset,), "cuda", dtype)
        _parity(BF.swiglu, lambda a, b: TF.silu(a) * b, base_g[offset:], base_u[offset:])
        _parity(lambda a, b: BF.geglu(a, b, approximate="tanh"),
                lambda a, b: TF.gelu(a, approximate="tanh") * b, base_g[offset:], base_u[offset:])


# --- GatedMLP


def test_gated_mlp_matches_llama_mlp_and_loads_its_state_dict():
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = LlamaConfig(hidden_size=16, intermediate_size=40, hidden_act="silu",
                      num_attention_heads=4, num_key_value_heads=2)
    theirs = LlamaMLP(cfg).double()
    ours = bnn.GatedMLP(16, 40, activation="silu", bias=False, dtype=torch.float64)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs)
    g = torch.randn_like(y_ours)
    params = [x, *ours.parameters()]
    for a, b in zip(torch.autograd.grad(y_ours, params, g),
                    torch.autograd.grad(y_theirs, [x, *theirs.parameters()], g)):
        torch.testing.assert_close(a, b)


def test_gated_mlp_keeps_one_intermediate_less():
    torch.manual_seed(0)
    ours = bnn.GatedMLP(16, 64)
    theirs = torch.nn.Module()
    x = torch.randn(32, 16, requires_grad=True)

    def saved_bytes(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: sizes.append((t.data_ptr(), t.numel())) or t, lambda t: t):
            fn()
        params = {p.data_ptr() for p in ours.parameters()} | {x.data_ptr()}
        return sum(n for ptr, n in dict(sizes).items() if ptr not in params)

    def plain():
        h = TF.silu(TF.linear(x, ours.gate_proj.weight)) * TF.linear(x, ours.up_proj.weight)
        return TF.linear(h, ours.down_proj.weight)

    del theirs
    assert saved_bytes(plain) - saved_bytes(lambda: ours(x)) == 32 * 64  # one (N, I) tensor
    assert "activation='silu'" in repr(ours)


def test_bench_rows_and_kept_memory():
    from backprop_ext.benchmarks import bench_gated

    rows = bench_gated.run("cpu", sizes=[64], ops=["swiglu", "llama_mlp"], reps=1)
    assert {(r.op, r.direction) for r in rows} == {
        (op, d) for op in ("swiglu", "llama_mlp") for d in ("fwd", "bwd", "fwd+bwd")}
    assert all(r.ms > 0 and r.torch_ms > 0 for r in rows)
    step = next(r for r in rows if r.op == "llama_mlp" and r.direction == "fwd+bwd")
    _, _, inter = bench_gated.MLP_SHAPES["cpu"]
    assert step.torch_peak_bytes - step.peak_bytes == 64 * inter * 4  # silu(gate), float32


def test_activation_parse_cache_is_linears_and_bounded():
    from backprop_ext.ops import linear as L

    x = torch.randn(4)
    for i in range(L._PARSED_MAX + 50):  # as many distinct arguments as a sweep could pass
        BF.gated(x, x, ("leaky_relu", 0.001 * i))
    assert len(L._PARSED) <= L._PARSED_MAX
    assert ("leaky_relu", 0.0) in L._PARSED  # gated's arguments are cached in linear's cache


def _mlp_and_input(dtype=torch.float32):
    torch.manual_seed(0)
    return bnn.GatedMLP(16, 64, dtype=dtype), torch.randn(32, 16, dtype=dtype, requires_grad=True)


def test_gated_mlp_recomputes_the_product_for_down_proj(monkeypatch):
    """Without saved-tensor hooks of the user's, down_proj's input f(gate) * up is not kept: the
    forward holds one (N, I) tensor less, and the gradients are those of the kept product, bit
    for bit, first and second order."""
    from backprop_ext.checkpoint.memory import AllocatorPeak
    from backprop_ext.nn import modules

    ours, x = _mlp_and_input()

    def held_after_forward():
        with AllocatorPeak() as mem:
            y = ours(x)
        del y  # the graph goes with it: live counted what it held
        return mem.live

    def grads(create_graph):
        y = ours(x)
        g = torch.autograd.grad(y.square().sum(), [x, *ours.parameters()],
                                create_graph=create_graph)
        if create_graph:
            g = torch.autograd.grad(sum(t.square().sum() for t in g), [x, *ours.parameters()])
        return g

    recomputed = held_after_forward(), grads(False), grads(True)
    monkeypatch.setattr(modules, "_recomputes_product", lambda product: False)
    kept = held_after_forward(), grads(False), grads(True)
    assert kept[0] - recomputed[0] == 32 * 64 * 4
    for a, b in zip(recomputed[1] + recomputed[2], kept[1] + kept[2]):
        assert torch.equal(a, b)


def test_gated_mlp_leaves_saved_tensors_to_outer_hooks():
    """Under the user's hooks (save_on_cpu here) every tensor down_proj saves reaches them."""
    ours, x = _mlp_and_input()
    seen = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.shape) or t,
                                                  lambda t: t):
        y = ours(x)
    assert torch.Size([32, 64]) in seen  # the product, as down_proj's input
    with torch.autograd.graph.save_on_cpu():
        y2 = ours(x)
    a = torch.autograd.grad(y.sum(), x)[0]
    b = torch.autograd.grad(y2.sum(), x)[0]
    assert torch.equal(a, b)


def test_gated_mlp_recompute_under_forward_ad_and_func():
    ours, x = _mlp_and_input(torch.float64)
    params = dict(ours.named_parameters())
    t = torch.randn_like(x)
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = fwAD.unpack_dual(ours(fwAD.make_dual(x.detach(), t))).tangent
    _, expected = torch.func.jvp(lambda x: torch.func.functional_call(ours, params, (x,)),
                                 (x.detach(),), (t,))
    torch.testing.assert_close(out, expected)
    grad = torch.func.grad(lambda x: torch.func.functional_call(ours, params, (x,)).sum())
    torch.testing.assert_close(grad(x.detach()), torch.autograd.grad(ours(x).sum(), x)[0])
