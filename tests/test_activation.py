"""The activation family against torch: values, gradients, higher-order AD, tracing, layouts,
edge values and bad input."""

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck

import backprop_ext
import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.checkpoint.memory import AllocatorPeak
from backprop_ext.ops.activation import (
    _SECOND_DERIVATIVES,
    ACTIVATIONS,
    FUNCTION_ROWS,
    SAVES_OUTPUT,
    SPECS,
)
from backprop_ext.testing import (
    ACTIVATION_CASES,
    REFERENCES,
    assert_matches,
    jvp_of_gradient,
)

from .conftest import DEVICES

CASES = [pytest.param(c, id=c.label) for c in ACTIVATION_CASES]
INPLACE_FUNCTIONS = [f for f, rows in FUNCTION_ROWS.items() if rows[0].inplace]


# --- the activation table (csrc/ops/activation_table.h) and what is derived from it


def test_generated_source_is_current():
    # The public functions and Modules are written out from the table (ops/generate.py).
    from backprop_ext.ops.generate import COMMAND, stale

    assert not stale(), f"out of date with the activation table: {stale()}; run `{COMMAND}`"


def test_public_functions_and_modules_are_source():
    import inspect

    for name in FUNCTION_ROWS:
        fn = getattr(BF, name)
        assert f"def {name}(" in inspect.getsource(fn), name
        assert fn.__doc__ and "torch.nn.functional" in fn.__doc__
        # the table row's signature, torch's (gelu and softplus are builtins without one)
        params = inspect.signature(fn).parameters
        assert [(p, v.default) for p, v in params.items()][1:] == list(
            FUNCTION_ROWS[name][0].arguments), name
    for name, cls in bnn.ACTIVATION_MODULES.items():
        assert f"class {name}(" in inspect.getsource(cls), name
        assert getattr(bnn, name) is cls


def test_every_piece_agrees_with_the_table():
    table = backprop_ext._C.activation_table()
    assert ACTIVATIONS == tuple(row[0] for row in table)
    assert SAVES_OUTPUT == {row[0] for row in table if row[1]}
    assert set(_SECOND_DERIVATIVES) == set(ACTIVATIONS), "every row needs a second derivative"
    # The C++ lookup knows every row and nothing else; a row's kernels run and save what it says.
    x = torch.randn(5, dtype=torch.float64)
    for name, spec in SPECS.items():
        y = torch.ops.backprop_ext.activation_fwd(x, name, *spec.floats({}))
        assert y.shape == x.shape
    with pytest.raises(RuntimeError, match="unknown activation 'nope'; expected one of: relu"):
        torch.ops.backprop_ext.activation_fwd(x, "nope")
    # Functional and nn faces: one function per torch.nn.functional name, with torch's
    # parameters (and torch's signature where torch's function has an inspectable one), one
    # Module per torch.nn class, subclassing it.
    import inspect

    for function, rows in FUNCTION_ROWS.items():
        ours = inspect.signature(getattr(BF, function))
        assert list(ours.parameters)[1:] == [a for a, _ in rows[0].arguments]
        theirs = getattr(TF, function, None)
        try:
            expected = inspect.signature(theirs)
        except (TypeError, ValueError):  # a builtin without a signature
            continue
        assert [(p.name, p.default) for p in ours.parameters.values()] == [
            (p.name, p.default) for p in expected.parameters.values()], function
    for spec in SPECS.values():
        ours = getattr(bnn, spec.module)
        theirs = getattr(torch.nn, spec.module, None)
        if theirs is None:  # ours alone (quick_gelu): a Module with the function's parameters
            assert issubclass(ours, torch.nn.Module) and not hasattr(TF, spec.function)
            assert spec.function in REFERENCES, "a row torch lacks needs a reference formula"
            module = ours(**{a: v for a, v in spec.arguments if a in spec.params})
            torch.testing.assert_close(module(x), REFERENCES[spec.function](x))
            continue
        assert issubclass(ours, theirs)
        assert bnn.convert(theirs()).__class__ is ours
    # The cases the tests and `check` run cover every row.
    covered = {backprop_ext.ops.activation.resolve(c.name, (), dict(c.kwargs))[0].name
               for c in ACTIVATION_CASES}
    assert covered == set(ACTIVATIONS)


def _make(shape_or_kind, device, dtype):
    """Inputs of the layouts that matter; values spread over every branch of every activation."""
    def rand(*s):
        return (torch.randn(s, dtype=torch.float64) * 3).to(device=device, dtype=dtype)

    if shape_or_kind == "strided":  # every other row: not dense
        return rand(14, 9)[::2]
    if shape_or_kind == "transposed":  # dense, not contiguous: walked in place
        return rand(9, 13).t()
    if shape_or_kind == "expanded":  # zero stride
        return rand(1, 17).expand(5, 17)
    return rand(*shape_or_kind)


SHAPES = [(), (0,), (1,), (7,), (1023,), (4097,), (3, 0, 2), (5, 7, 3), "strided", "transposed",
          "expanded"]
SHAPE_IDS = ["0d", "empty", "one", "7", "1023", "4097", "empty3d", "5x7x3", "strided",
             "transposed", "expanded"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward_backward_match_torch(case, shape, device, dtype):
    x = _make(shape, device, dtype)
    grad_out = torch.randn(x.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    x_ours = x.detach().requires_grad_()
    x_torch = x.detach().requires_grad_()
    x_ref = x.detach().double().requires_grad_()

    y_ours, y_torch, y_ref = case.ours(x_ours), case.torch(x_torch), case.torch(x_ref)
    assert y_ours.dtype == dtype and y_ours.shape == x.shape and y_ours.device == x.device
    assert_matches(y_ours, y_torch, y_ref)

    y_ours.backward(grad_out)
    y_torch.backward(grad_out)
    y_ref.backward(grad_out.double())
    assert_matches(x_ours.grad, x_torch.grad, x_ref.grad)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_and_gradgradcheck(case, device):
    x = (torch.randn(4, 5, dtype=torch.float64, device=device) * 2).requires_grad_()
    # Keep away from the kinks of relu/leaky_relu and softplus's threshold, where finite
    # differences straddle two branches.
    x = (x + 0.1 * torch.sign(x.detach())).detach().requires_grad_()
    assert gradcheck(case.ours, (x,))
    assert gradgradcheck(case.ours, (x,))


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_matches_torch_func_jvp(case, device):
    x = torch.randn(6, 5, dtype=torch.float64, device=device) * 2
    t = torch.randn_like(x)
    y, jvp = torch.func.jvp(case.ours, (x,), (t,))
    y_ref, jvp_ref = torch.func.jvp(case.torch, (x,), (t,))
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(jvp, jvp_ref)


@pytest.mark.parametrize("case", CASES)
def test_forward_over_reverse(case, device):
    # jvp of the gradient: exercises ActivationBackwardFunction.jvp.
    x = torch.randn(8, dtype=torch.float64, device=device) * 2
    t = torch.randn_like(x)

    def grad_of(fn):
        return lambda inp: torch.func.grad(lambda z: fn(z).sum())(inp)

    _, ours = torch.func.jvp(grad_of(case.ours), (x,), (t,))
    ref = jvp_of_gradient(grad_of(case.torch), (x,), (t,))
    torch.testing.assert_close(ours, ref[0] if isinstance(ref, tuple) else ref)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_opcheck(name, device):
    ops = torch.ops.backprop_ext
    p0, p1 = SPECS[name].floats({})
    for x in (torch.randn(3, 4, device=device), torch.randn(4, 6, device=device).t(),
              torch.randn(8, 3, device=device)[::2]):
        g = torch.randn_like(x)
        torch.library.opcheck(ops.activation_fwd.default, (x, name, p0, p1))
        torch.library.opcheck(ops.activation_fwd_.default, (x.clone(), name, p0, p1))
        torch.library.opcheck(ops.activation_bwd.default, (g, x, name, p0, p1))
        torch.library.opcheck(ops.activation_bwd.default, (g.contiguous(), x, name, p0, p1))


def test_compile_fullgraph_matches_eager():
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), bnn.GELU(), torch.nn.Linear(32, 32), bnn.GELU("tanh"),
        bnn.SiLU(), bnn.LeakyReLU(0.1), bnn.Softplus(2.0, 5.0), bnn.Tanh(), bnn.Sigmoid(),
        bnn.ReLU(),
    )
    x = torch.randn(8, 16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y_eager, y_comp = model(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), model.parameters())
    g_comp = torch.autograd.grad(y_comp.sum(), model.parameters())
    for a, b in zip(g_eager, g_comp):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compile_inductor_fullgraph_matches_eager():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), bnn.GELU(), torch.nn.Linear(32, 4))
    x = torch.randn(8, 16)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


def test_large_input_crosses_thread_chunks(device):
    x = torch.randn(2**20 + 3, device=device)
    for case in ACTIVATION_CASES:
        torch.testing.assert_close(case.ours(x), case.torch(x), rtol=2e-6, atol=2e-6)


def test_broadcast_gradient_is_read_in_place(device, dtype):
    # sum() and mean() send back one value broadcast over the output: the backward reads it where
    # the result goes (one tensor, the result, at the peak), with the bits of the dense gradient.
    ops = torch.ops.backprop_ext
    saved = torch.randn(33, 65, device=device, dtype=dtype)
    for grad in (torch.tensor(0.75, device=device, dtype=dtype).expand(33, 65),
                 torch.full((1, 65), 2.0, device=device, dtype=dtype).expand(33, 65)[:, :1]
                 .expand(33, 65)):
        for name in ACTIVATIONS:
            dense = ops.activation_bwd(grad.contiguous(), saved, name, 0.1, 1.5)
            out = ops.activation_bwd(grad, saved, name, 0.1, 1.5)
            assert torch.equal(out, dense) and out.is_contiguous(), name
    transposed = saved.t().contiguous().t()
    out = ops.activation_bwd(grad, transposed, "gelu", 0.0, 0.0)
    assert torch.equal(out, ops.activation_bwd(grad.contiguous(), transposed, "gelu", 0.0, 0.0))
    if device == "cpu":
        with AllocatorPeak() as mem:
            out = ops.activation_bwd(grad, saved, "silu", 0.0, 0.0)
        assert mem.peak == out.untyped_storage().nbytes()
    x = torch.randn(33, 65, device=device, dtype=dtype, requires_grad=True)
    (ours,) = torch.autograd.grad(BF.gelu(x).mean(), x)
    (ref,) = torch.autograd.grad(TF.gelu(x).mean(), x)
    x64 = x.detach().double().requires_grad_()
    (ref64,) = torch.autograd.grad(TF.gelu(x64).mean(), x64)
    assert_matches(ours, ref, ref64)


@pytest.mark.parametrize("name", INPLACE_FUNCTIONS)
def test_inplace(name, device):
    fn_ours, fn_torch = getattr(BF, name), getattr(TF, name)
    x = torch.randn(10, 3, device=device)
    y = x.clone()
    out = fn_ours(y, inplace=True)
    assert out is y
    torch.testing.assert_close(y, fn_torch(x))
    # Non-dense input: written back through the view.
    base = torch.randn(10, 6, device=device)
    view_ours, view_torch = base.clone()[:, ::2], base.clone()[:, ::2]
    fn_ours(view_ours, inplace=True)
    fn_torch(view_torch, inplace=True)
    torch.testing.assert_close(view_ours, view_torch)
    # Under autograd on a non-leaf: the gradient flows to the original leaf, as in torch.
    leaf_ours = torch.randn(5, 4, device=device, requires_grad=True)
    leaf_torch = leaf_ours.detach().clone().requires_grad_()
    (fn_ours(leaf_ours * 2, inplace=True) ** 2).sum().backward()
    (fn_torch(leaf_torch * 2, inplace=True) ** 2).sum().backward()
    torch.testing.assert_close(leaf_ours.grad, leaf_torch.grad)
    # On a leaf that requires grad, both refuse.
    with pytest.raises(RuntimeError, match="leaf Variable"):
        fn_ours(torch.randn(3, requires_grad=True, device=device), inplace=True)


def test_inputs_and_saved_tensors_are_not_modified(device):
    for case in ACTIVATION_CASES:
        x = torch.randn(33, device=device, requires_grad=True)
        before = x.detach().clone()
        y = case.ours(x)
        y_before = y.detach().clone()
        g = torch.randn_like(y)
        g_before = g.clone()
        y.backward(g)
        assert torch.equal(x.detach(), before), case.label
        assert torch.equal(y.detach(), y_before), case.label
        assert torch.equal(g, g_before), case.label


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_edge_values(dtype, device):
    values = [0.0, -0.0, 1e4, -1e4, 30.0, -30.0, 88.0, -88.0, float("inf"), float("-inf"),
              float("nan"), 1e-7, -1e-7]
    x = torch.tensor(values * 3, dtype=dtype, device=device)  # long enough for the vector path
    for case in ACTIVATION_CASES:
        xo, xt = x.detach().requires_grad_(), x.detach().requires_grad_()
        xr = x.detach().double().requires_grad_()
        yo, yt, yr = case.ours(xo), case.torch(xt), case.torch(xr)
        assert_matches(yo, yt, yr)
        g = torch.ones_like(yo)
        yo.backward(g)
        yt.backward(g)
        yr.backward(g.double())
        assert_matches(xo.grad, xt.grad, xr.grad)


def test_autocast_cpu_matches_torch():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    for case in ACTIVATION_CASES:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_ours = case.ours(lin(x))
            y_torch = case.torch(lin(x))
        assert y_ours.dtype == y_torch.dtype == torch.bfloat16
        torch.testing.assert_close(y_ours, y_torch)
        g_ours = torch.autograd.grad(y_ours.float().sum(), lin.weight)[0]
        g_torch = torch.autograd.grad(y_torch.float().sum(), lin.weight)[0]
        torch.testing.assert_close(g_ours, g_torch)


@pytest.mark.cuda
def test_autocast_cuda_matches_torch():
    lin = torch.nn.Linear(8, 8, device="cuda")
    x = torch.randn(4, 8, device="cuda")
    for case in ACTIVATION_CASES:
        with torch.autocast("cuda", dtype=torch.float16):
            y_ours, y_torch = case.ours(lin(x)), case.torch(lin(x))
        assert y_ours.dtype == y_torch.dtype
        torch.testing.assert_close(y_ours, y_torch)


# --- modules and convert


def test_modules_match_torch_modules():
    pairs = [
        (bnn.ReLU(), torch.nn.ReLU()),
        (bnn.LeakyReLU(0.3), torch.nn.LeakyReLU(0.3)),
        (bnn.GELU(approximate="tanh"), torch.nn.GELU(approximate="tanh")),
        (bnn.SiLU(), torch.nn.SiLU()),
        (bnn.Sigmoid(), torch.nn.Sigmoid()),
        (bnn.Tanh(), torch.nn.Tanh()),
        (bnn.Softplus(beta=2.0, threshold=4.0), torch.nn.Softplus(beta=2.0, threshold=4.0)),
        (bnn.Hardswish(), torch.nn.Hardswish()), (bnn.Hardsigmoid(), torch.nn.Hardsigmoid()),
        (bnn.ReLU6(inplace=True), torch.nn.ReLU6(inplace=True)),
        (bnn.ELU(alpha=0.7), torch.nn.ELU(alpha=0.7)), (bnn.SELU(), torch.nn.SELU()),
        (bnn.Mish(), torch.nn.Mish()),
    ]
    x = torch.randn(6, 7) * 3
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)
        assert isinstance(ours, type(theirs))
        torch.testing.assert_close(ours(x.clone()), theirs(x.clone()))
    assert repr(bnn.QuickGELU()) == "QuickGELU()"


def test_convert_swaps_layers_and_keeps_state():
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Sequential(torch.nn.Linear(8, 8),
                                                                    torch.nn.ReLU(inplace=True)),
        torch.nn.Softplus(beta=3.0), torch.nn.Linear(8, 2),
    )
    keys = list(model.state_dict().keys())
    params = [p.data_ptr() for p in model.parameters()]
    x = torch.randn(3, 4)
    expected = model(x)
    converted = bnn.convert(model)
    assert converted is model
    assert type(model[1]) is bnn.GELU and type(model[2][1]) is bnn.ReLU
    assert type(model[3]) is bnn.Softplus and model[3].beta == 3.0
    assert model[2][1].inplace
    assert list(model.state_dict().keys()) == keys
    assert [p.data_ptr() for p in model.parameters()] == params
    torch.testing.assert_close(model(x), expected)


# --- bad input


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_rejects_non_float_dtypes(dtype):
    x = torch.ones(3, dtype=dtype)
    # The op's own check, in C++, reported under the public function's name and argument.
    with pytest.raises(RuntimeError, match="backprop_ext.gelu: expected input to be a float64, "
                                           "float32, float16 or bfloat16 tensor, but got"):
        BF.gelu(x)
    with pytest.raises(RuntimeError,
                       match="expected self to be a float64, float32, float16 or bfloat16"):
        torch.ops.backprop_ext.activation_fwd(x, "relu")


def test_rejects_bad_arguments():
    x = torch.randn(3)
    with pytest.raises(RuntimeError, match="approximate must be 'none' or 'tanh', got 'fast'"):
        BF.gelu(x, approximate="fast")  # torch's class for it
    with pytest.raises(RuntimeError, match="unknown activation 'swish'"):
        torch.ops.backprop_ext.activation_fwd(x, "swish")
    with pytest.raises(TypeError, match=r"backprop_ext.relu\(\): argument 'input' \(position 1\) "
                                        "must be Tensor, not list"):
        BF.relu([1.0, 2.0])
    with pytest.raises(TypeError, match=r"backprop_ext.leaky_relu\(\): argument 'negative_slope' "
                                        r"\(position 2\) must be Number, not str"):
        BF.leaky_relu(x, "a")
    with pytest.raises(RuntimeError, match="same shape.*\\[3\\] and \\[4\\]"):
        torch.ops.backprop_ext.activation_bwd(x, torch.randn(4), "relu")
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.ops.backprop_ext.activation_bwd(x, x.double(), "relu")


@pytest.mark.cuda
def test_rejects_mixed_devices():
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.backprop_ext.activation_bwd(torch.randn(3), torch.randn(3, device="cuda"), "relu")


@pytest.mark.cuda
@pytest.mark.parametrize("offset", [1, 3])
def test_cuda_misaligned_pointers_take_the_scalar_path(offset):
    base = torch.randn(4099, device="cuda", dtype=torch.bfloat16)
    x = base[offset:]
    torch.testing.assert_close(BF.gelu(x), TF.gelu(x))
    g = torch.randn_like(base)[offset:]
    xo = x.detach().requires_grad_()
    xt = x.detach().requires_grad_()
    BF.silu(xo).backward(g)
    TF.silu(xt).backward(g)
    torch.testing.assert_close(xo.grad, xt.grad)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_cuda_lengths_about_the_tile(dtype, offset):
    # Lengths about the CUDA elementwise loop's boundaries (a 16-byte pack of 2, 4 or 8 elements,
    # a thread's 8 elements, a block's tile of 1024 elements, a last tile partly full), from an
    # aligned start and from a misaligned one (element by element), forward, backward, in place.
    gen = torch.Generator().manual_seed(5)
    for n in (1, 3, 8, 9, 1023, 1024, 1025, 2056, 5 * 1024 + 13):
        x = (torch.randn(n + offset, generator=gen, dtype=torch.float64) * 3).to("cuda", dtype)
        g = torch.randn(n + offset, generator=gen, dtype=torch.float64).to("cuda", dtype)
        x, g = x[offset:], g[offset:]
        assert (x.data_ptr() % 16 == 0) == (offset == 0)
        for name in ("relu", "silu", "gelu"):
            xo, xt = x.detach().requires_grad_(), x.detach().requires_grad_()
            yo, yt = getattr(BF, name)(xo), getattr(TF, name)(xt)
            torch.testing.assert_close(yo, yt)
            torch.testing.assert_close(torch.autograd.grad(yo, xo, g)[0],
                                       torch.autograd.grad(yt, xt, g)[0])
            if name != "gelu":  # in place, on a view with the same offset
                view = torch.empty(n + offset, device="cuda", dtype=dtype)[offset:]
                view.copy_(x)
                getattr(BF, name)(view, inplace=True)
                torch.testing.assert_close(view, yt)


@pytest.mark.parametrize("device", DEVICES)
def test_output_layout_follows_dense_input(device):
    x = torch.randn(4, 6, device=device).t()
    y = BF.gelu(x)
    assert y.stride() == x.stride()
    x_cl = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    assert BF.silu(x_cl).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dense_sweep_accuracy(dtype):
    # Every representable region the approximations switch between (tanh's polynomial and
    # exponential branches, softplus's threshold, the saturation of sigmoid, ...).
    x = torch.linspace(-40, 40, 200_003, dtype=torch.float64)
    x = torch.cat([x, torch.linspace(-1, 1, 100_001, dtype=torch.float64)]).to(dtype)
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    for case in ACTIVATION_CASES:
        xo, xt = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
        xr = x.detach().double().clone().requires_grad_()
        yo, yt, yr = case.ours(xo), case.torch(xt), case.torch(xr)
        assert_matches(yo, yt, yr)
        yo.backward(g)
        yt.backward(g)
        yr.backward(g.double())
        assert_matches(xo.grad, xt.grad, xr.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_a_value_rounds_the_same_wherever_it_sits(dtype):
    # Every element takes the vector math, the last partial vector's too: an element's result
    # does not depend on its position (a scalar tail would round differently from the lanes).
    ops = torch.ops.backprop_ext
    x = (torch.randn(67, dtype=torch.float64) * 4).to(dtype)
    g = torch.randn(67, dtype=torch.float64).to(dtype)
    for name, spec in SPECS.items():
        p0, p1 = spec.floats({})
        whole = ops.activation_fwd(x, name, p0, p1)
        alone = torch.cat([ops.activation_fwd(x[i:i + 1], name, p0, p1) for i in range(67)])
        assert torch.equal(whole, alone), name
        whole = ops.activation_bwd(g, x, name, p0, p1)
        alone = torch.cat([ops.activation_bwd(g[i:i + 1], x[i:i + 1], name, p0, p1)
                           for i in range(67)])
        assert torch.equal(whole, alone), name


def test_benchmark_times_torchs_own_functions(monkeypatch):
    # The references that adjust torch's NaN gradients cost extra passes: timing them would
    # flatter ours. The benchmark calls torch.nn.functional's function itself where one exists.
    from backprop_ext.benchmarks.bench_activation import OPS

    x = torch.randn(4)
    for name, case in OPS.items():
        if not hasattr(TF, case.name):
            assert name == "quick_gelu"
            torch.testing.assert_close(case.torch_own(x), x * torch.sigmoid(1.702 * x))
            continue
        monkeypatch.setattr(TF, case.name, lambda t, **kwargs: ("torch's own", kwargs))
        assert case.torch_own(x) == ("torch's own", dict(case.kwargs)), name
        monkeypatch.undo()
