"""The registered ops behave like torch's own: every op differentiates when called raw
(opcheck with inputs that require grad, gradcheck through torch.ops), a converted model exports
with torch.export and trains from the exported program, vmap and per-sample gradients
(vmap(grad)) match torch's own functions in every family, in_dims other than 0 included, and (on
a GPU) a converted model's training step replays from a CUDA graph."""

import copy
import io

import pytest
import torch
import torch.nn.functional as TF
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call, grad, jacfwd, jacrev, vmap

import backprop_ext.functional as BF
import backprop_ext.nn as bnn
from backprop_ext.testing import ACTIVATION_CASES, SOFTMAX_CASES, op_samples

# vmap must never fall back to running an op once per sample (functorch warns when it does).
pytestmark = pytest.mark.filterwarnings("error:There is a performance drop")

ops = torch.ops.backprop_ext
SAMPLES = op_samples("cpu")


def _ids(samples):
    return [label for label, _, _ in samples]


# --- raw ops: autograd registered on every op


@pytest.mark.parametrize("sample", SAMPLES, ids=_ids(SAMPLES))
def test_opcheck_with_inputs_that_require_grad(sample):
    # Every opcheck test: the schema, the autograd registration, the fake kernel, AOTAutograd
    # (forward and backward) with dynamic shapes.
    _, op, args = sample
    torch.library.opcheck(op, args)


@pytest.mark.cuda
def test_opcheck_with_inputs_that_require_grad_cuda():
    for _, op, args in op_samples("cuda"):
        torch.library.opcheck(op, args)


def test_every_op_is_sampled():
    sampled = {op.name() for _, op, _ in SAMPLES}
    ours = {name for name in torch._C._dispatch_get_all_op_names()
            if name.startswith("backprop_ext::") and "multi_tensor" not in name}
    assert ours == sampled


# Not here: the in-place and out= ops (no functional gradient), and cross_entropy_bwd, whose lse
# argument is the forward's non-differentiable output: its formulas differentiate along
# lse = lse(logits), not with lse held fixed (test_softmax's gradgradcheck covers them).
GRADCHECK_SAMPLES = [s for s in op_samples("cpu", torch.float64) if not s[0].startswith(
    ("activation_fwd_", "cross_entropy_bwd"))]


@pytest.mark.parametrize("sample", GRADCHECK_SAMPLES, ids=_ids(GRADCHECK_SAMPLES))
def test_raw_op_gradcheck(sample):
    """torch.ops.backprop_ext.<op> called directly in grad mode: first and second derivatives
    (the backward ops have autograd of their own)."""
    label, op, args = sample
    if label.startswith(("activation_bwd-relu", "linear_bwd-relu", "linear_preact_bwd-relu")):
        pytest.skip("relu's saved output has exact zeros, where its derivative steps")
    pos = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def fn(*tensors):
        full = list(args)
        for i, t in zip(pos, tensors):
            full[i] = t
        out = op(*full)
        outs = out if isinstance(out, tuple) else (out,)
        return tuple(o for o in outs if o.requires_grad)

    inputs = tuple(args[i].detach().requires_grad_() for i in pos)
    assert gradcheck(fn, inputs)
    if not label.startswith("linear_bwd"):  # linear_bwd's second order: test_linear's gradgradcheck
        assert gradgradcheck(fn, inputs)


def test_inplace_op_bumps_the_version_and_differentiates():
    x = torch.randn(5, requires_grad=True)
    y = x * 2
    saved = y.sigmoid()  # sigmoid's backward reads its output: a later write must be detected
    version = saved._version
    ops.activation_fwd_(saved, "gelu")
    assert saved._version == version + 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()
    # Under autograd the raw in-place op is differentiable, like torch's relu_.
    a = torch.randn(6, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    h = a * 3
    ops.activation_fwd_(h, "silu")
    h.sum().backward()
    torch.nn.functional.silu(b * 3).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_forward_mode_through_raw_ops():
    x, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    _, ours = torch.func.jvp(lambda z: ops.softmax_fwd(z, 1, True), (x,), (t,))
    _, ref = torch.func.jvp(lambda z: TF.log_softmax(z, 1), (x,), (t,))
    torch.testing.assert_close(ours, ref)


# --- torch.export: a converted model exported, then trained from the exported program


class _Net(torch.nn.Module):
    """A small classifier using every family: linear (fused and not), activations, softmax."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(),
                                        torch.nn.Linear(16, 16), torch.nn.SiLU(),
                                        torch.nn.Linear(16, 5))
        self.norm = torch.nn.LogSoftmax(-1)

    def forward(self, x):
        return self.norm(self.body(x))


class _WithLoss(torch.nn.Module):
    def __init__(self, net, loss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x, target):
        return self.loss(self.net(x), target)


def _grads(module):
    return {k: p.grad for k, p in module.named_parameters()}


@pytest.mark.parametrize("fuse", [False, True], ids=["convert", "convert_fuse"])
def test_export_round_trip_trains(fuse):
    torch.manual_seed(0)
    reference = _WithLoss(_Net(), torch.nn.CrossEntropyLoss(label_smoothing=0.1))
    ours = bnn.convert(copy.deepcopy(reference), fuse=fuse)
    x, target = torch.randn(6, 8), torch.tensor([0, 4, 2, 2, 1, 3])
    program = torch.export.export(ours, (x, target))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert "backprop_ext.linear_fwd.default" in targets and any("backprop_ext.cross_entropy" in t
                                                                for t in targets)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    initial = copy.deepcopy(reference.state_dict())
    for exported in (program.module(), torch.export.load(buffer).module()):
        reference.load_state_dict(initial)
        reference.zero_grad()
        loss = exported(x, target)
        loss.backward()
        expected = reference(x, target)
        expected.backward()
        torch.testing.assert_close(loss, expected)
        ref_grads = _grads(reference)
        for name, g in _grads(exported).items():
            assert g is not None, name
            torch.testing.assert_close(g, ref_grads[name])
        # A step of SGD from the exported program's gradients, then the next loss.
        opt = torch.optim.SGD(exported.parameters(), lr=0.1)
        opt.step()
        with torch.no_grad():
            for p in reference.parameters():
                p -= 0.1 * p.grad
            torch.testing.assert_close(exported(x, target), reference(x, target))


def test_export_eval_mode_and_the_issue_examples():
    x = torch.randn(2, 4, requires_grad=True)
    linear = bnn.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    out = torch.export.export(linear, (x,)).module()(x)
    out.sum().backward()  # was: "addmm(): functions with out=... arguments don't support ..."
    torch.testing.assert_close(x.grad, linear[0].weight.sum(0).detach().expand(2, 4))
    x.grad = None
    relu = torch.export.export(bnn.convert(torch.nn.ReLU()), (x,)).module()
    relu(x).sum().backward()  # was: x.grad silently None
    torch.testing.assert_close(x.grad, (x > 0).float())
    net = bnn.convert(_Net()).eval()
    with torch.no_grad():
        program = torch.export.export(net, (x.detach().repeat(1, 2),))
        torch.testing.assert_close(program.module()(x.detach().repeat(1, 2)),
                                   net(x.detach().repeat(1, 2)))


# --- vmap and per-sample gradients, every family against torch's own functions


@pytest.mark.parametrize("case", ACTIVATION_CASES, ids=[c.label for c in ACTIVATION_CASES])
def test_vmap_activations(case):
    x = torch.randn(4, 5, 3, dtype=torch.float64) * 3
    for in_dims in (0, 1, 2):
        torch.testing.assert_close(vmap(case.ours, in_dims=in_dims)(x),
                                   vmap(case.torch, in_dims=in_dims)(x))
        per_sample = [vmap(grad(lambda t, f=f: f(t).square().sum()), in_dims=in_dims)(x)
                      for f in (case.ours, case.torch)]
        torch.testing.assert_close(*per_sample)


@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=[c.label for c in SOFTMAX_CASES])
def test_vmap_softmax_family(case):
    x = torch.randn(3, 6, 5, dtype=torch.float64)

    def loss(f):
        return lambda t: f(t).sin().sum()

    for in_dims in (0, 2):
        torch.testing.assert_close(vmap(case.ours, in_dims=in_dims)(x),
                                   vmap(case.torch, in_dims=in_dims)(x))
        torch.testing.assert_close(vmap(grad(loss(case.ours)), in_dims=in_dims)(x),
                                   vmap(grad(loss(case.torch)), in_dims=in_dims)(x))


def test_vmap_gated_units():
    gate, up = (torch.randn(4, 5, 3, dtype=torch.float64) for _ in range(2))
    pairs = ((BF.swiglu, lambda g, u: TF.silu(g) * u),
             (lambda g, u: BF.geglu(g, u, "tanh"), lambda g, u: TF.gelu(g, approximate="tanh") * u))
    for ours, theirs in pairs:
        # Both batched alike, batched along different dims, and one operand not batched.
        for in_dims, args in (((0, 0), (gate, up)), ((2, 1), (gate, up.transpose(1, 2))),
                              ((1, None), (gate, up[:, 0]))):
            torch.testing.assert_close(vmap(ours, in_dims=in_dims)(*args),
                                       vmap(theirs, in_dims=in_dims)(*args))
            per_sample = [vmap(grad(lambda g, u, f=f: f(g, u).sin().sum(), argnums=(0, 1)),
                               in_dims=in_dims)(*args) for f in (ours, theirs)]
            torch.testing.assert_close(*per_sample)
        g, u = gate[0, :, 0], up[0, :, 0]
        for jac in (jacrev, jacfwd):  # vmap of the backward op, and of the jvp
            torch.testing.assert_close(jac(ours, argnums=(0, 1))(g, u),
                                       jac(theirs, argnums=(0, 1))(g, u))
        torch.testing.assert_close(jacrev(jacrev(ours))(g, u), jacrev(jacrev(theirs))(g, u))


def test_vmap_of_the_backward_ops_and_jacobians():
    x = torch.randn(3, 4, dtype=torch.float64)
    for ours, theirs in ((lambda t: BF.softmax(t, -1), lambda t: TF.softmax(t, -1)),
                         (lambda t: BF.log_softmax(t, 0), lambda t: TF.log_softmax(t, 0)),
                         (lambda t: BF.logsumexp(t, 1), lambda t: torch.logsumexp(t, 1)),
                         (BF.gelu, TF.gelu), (BF.tanh, torch.tanh)):
        torch.testing.assert_close(jacrev(ours)(x), jacrev(theirs)(x))  # vmap of the backward
        torch.testing.assert_close(jacfwd(ours)(x), jacfwd(theirs)(x))  # vmap of the jvp
        torch.testing.assert_close(jacrev(jacrev(ours))(x), jacrev(jacrev(theirs))(x))
    # One operand batched (along dim 1), the other not.
    y = TF.softmax(torch.randn(4, dtype=torch.float64), 0)
    g = torch.randn(4, 3, dtype=torch.float64)
    ours = vmap(lambda a: ops.softmax_bwd(a, y, 0), in_dims=1)(g)
    torch.testing.assert_close(ours, torch.stack([ops.softmax_bwd(g[:, i], y, 0)
                                                  for i in range(3)]))


def test_vmap_cross_entropy_bwd_out_writes_each_sample():
    B, N, C = 3, 4, 5
    logits = torch.randn(B, N, C)
    target = torch.randint(0, C, (B, N))
    lse = torch.logsumexp(logits, -1)
    g = torch.randn(B, N)
    out = torch.empty(N, B, C)  # samples along dim 1

    def write(*args):
        ops.cross_entropy_bwd_out(*args)
        return args[-1]

    written = vmap(write, in_dims=(0, 0, None, 0, 0, None, None, 1))(
        logits, target, None, lse, g, None, -100, out)
    for b in range(B):
        expected = ops.cross_entropy_bwd(logits[b], target[b], None, lse[b], g[b], None, -100)
        torch.testing.assert_close(out[:, b], expected)
        torch.testing.assert_close(written[b], expected)


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.2, "reduction": "sum"},
                                    {"weight": True, "ignore_index": 1},
                                    {"reduction": "none", "weight": True}],
                         ids=["mean", "smooth-sum", "weight-ignore", "none-weight"])
def test_vmap_cross_entropy_per_sample_gradients(kwargs):
    B, N, C = 4, 6, 5
    logits = torch.randn(B, N, C, dtype=torch.float64)
    target = torch.randint(0, C, (B, N))
    if kwargs.pop("weight", False):
        kwargs["weight"] = torch.rand(C, dtype=torch.float64) + 0.5

    def loss(F):
        return lambda x, t: F.cross_entropy(x, t, **kwargs).sum()

    for in_dims in ((0, 0), (2, None)):
        x = logits if in_dims[0] == 0 else logits.permute(1, 2, 0)
        t = target if in_dims[1] == 0 else target[0]
        ours = vmap(grad(loss(BF)), in_dims=in_dims)(x, t)
        torch.testing.assert_close(ours, vmap(grad(loss(TF)), in_dims=in_dims)(x, t))
    # A class weight per sample: the per-sample fallback.
    weights = torch.rand(B, C, dtype=torch.float64) + 0.5
    per_sample = [vmap(lambda x, t, w, F=F: F.cross_entropy(x, t, weight=w))(logits, target,
                                                                            weights)
                  for F in (BF, TF)]
    torch.testing.assert_close(*per_sample)


@pytest.mark.parametrize("fuse", [False, True], ids=["convert", "convert_fuse"])
def test_per_sample_gradients_of_a_converted_model(fuse):
    torch.manual_seed(0)
    reference = _Net().double()
    ours = bnn.convert(copy.deepcopy(reference), fuse=fuse)
    x, target = torch.randn(7, 8, dtype=torch.float64), torch.randint(0, 5, (7,))

    def per_sample(model, loss):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def sample_loss(p, xi, ti):
            return loss(functional_call(model, p, (xi.unsqueeze(0),)), ti.unsqueeze(0))

        return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, target)

    # The net ends in log_softmax, so cross_entropy of its output is the nll of it.
    got = per_sample(ours, BF.cross_entropy)
    expected = per_sample(reference, TF.cross_entropy)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_vmap_linear_batched_weights_and_in_dims():
    x = torch.randn(5, 3, 8, dtype=torch.float64)  # samples along dim 1
    w, b = torch.randn(3, 6, 8, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    for activation, act in ((None, lambda z: z), ("gelu", TF.gelu), ("relu", TF.relu)):
        def ours(xi, wi, bi, a=activation):
            return BF.linear(xi, wi, bi, activation=a)

        def theirs(xi, wi, bi, f=act):
            return f(TF.linear(xi, wi, bi))

        # An ensemble: a weight and a bias per sample.
        torch.testing.assert_close(vmap(ours, in_dims=(1, 0, 0))(x, w, b),
                                   vmap(theirs, in_dims=(1, 0, 0))(x, w, b))
        # Per-sample gradients of one layer's parameters.
        g_ours = vmap(grad(lambda wi, bi, xi: ours(xi, wi, bi).square().sum(), argnums=(0, 1)),
                      in_dims=(None, None, 1))(w[0], b[0], x)
        g_torch = vmap(grad(lambda wi, bi, xi: theirs(xi, wi, bi).square().sum(),
                            argnums=(0, 1)), in_dims=(None, None, 1))(w[0], b[0], x)
        for a, c in zip(g_ours, g_torch):
            torch.testing.assert_close(a, c)


# --- CUDA graphs (GPU)


def _cuda_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return bnn.convert(net, fuse=True).cuda()


@pytest.mark.cuda
def test_cuda_graph_captures_a_training_step():
    """forward, our cross_entropy, backward and an SGD step captured once, replayed: the same
    results as eager steps, and as each other (nothing per call on the host)."""
    model, eager = _cuda_model(), _cuda_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1)
    batches = [(torch.randn(32, 64, device="cuda"), torch.randint(0, 10, (32,), device="cuda"))
               for _ in range(4)]
    static_x, static_t = (t.clone() for t in batches[0])

    def step(m, o, x, t):
        loss = BF.cross_entropy(m(x), t, label_smoothing=0.1)
        loss.backward()
        o.step()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up (allocator, cuBLAS handles) off the capture stream
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step(copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.0), static_x,
                 static_t)
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(model, opt, static_x, static_t)
    # The capture ran nothing: replay each batch and compare with eager steps.
    for x, t in batches:
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        eager_opt.zero_grad(set_to_none=True)
        expected = step(eager, eager_opt, x, t)
        torch.testing.assert_close(static_loss, expected)
        for p, q in zip(model.parameters(), eager.parameters()):
            torch.testing.assert_close(p, q)


@pytest.mark.cuda
def test_compile_reduce_overhead_training_matches_eager():
    model, eager = _cuda_model(), _cuda_model()
    compiled = torch.compile(model, mode="reduce-overhead")
    for _ in range(5):
        x = torch.randn(32, 64, device="cuda")
        t = torch.randint(0, 10, (32,), device="cuda")
        for m, fn in ((model, compiled), (eager, eager)):
            m.zero_grad(set_to_none=True)
            loss = BF.cross_entropy(fn(x), t)
            loss.backward()
        for p, q in zip(model.parameters(), eager.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)
