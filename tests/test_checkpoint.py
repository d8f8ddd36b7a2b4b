"""Checkpoint and CheckpointedSequential: the same results and gradients as the plain run (bit for
bit on CPU float64, dropout included), less memory kept, no GEMM recomputed under "selective",
and the autograd/compile/state_dict surface of a drop-in layer."""

import copy
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import backprop_ext.nn as bnn
from backprop_ext._memory import LiveTensorMemory, SavedTensorBytes
from backprop_ext.checkpoint import checkpoint, selective_policy

POLICIES = ["full", "selective"]


def _mlp(width=16, depth=3, dropout=0.25, dtype=torch.float64, device="cpu"):
    layers = []
    for i in range(depth):
        layers += [torch.nn.Linear(width, width), bnn.GELU() if i % 2 == 0 else bnn.SiLU()]
        if dropout:
            layers.append(torch.nn.Dropout(dropout))
    return torch.nn.Sequential(*layers).to(device=device, dtype=dtype)


def _run(model, x, seed=7, grad_of_input=True):
    """Output and gradients (input first, then parameters) of one forward/backward at `seed`."""
    torch.manual_seed(seed)
    x = x.detach().requires_grad_(grad_of_input)
    y = model(x)
    wrt = ([x] if grad_of_input else []) + list(model.parameters())
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype,
                                                     device=y.device)).sum(), wrt)
    return y, grads


def _assert_identical(a, b):
    (ya, ga), (yb, gb) = a, b
    assert torch.equal(ya, yb)
    assert len(ga) == len(gb)
    for x, y in zip(ga, gb):
        assert torch.equal(x, y)


# --- results equal the plain run


@pytest.mark.parametrize("policy", POLICIES)
def test_checkpoint_is_bitwise_plain_with_dropout(policy):
    plain = _mlp()
    x = torch.randn(10, 16, dtype=torch.float64)
    expected = _run(plain, x)
    _assert_identical(_run(bnn.Checkpoint(plain, policy=policy), x), expected)
    # A different seed draws different masks: the comparison above is not vacuous.
    assert not torch.equal(_run(plain, x, seed=8)[0], expected[0])


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("segments", [None, 1, 2, 4, 9])
def test_checkpointed_sequential_is_bitwise_plain(policy, segments):
    plain = _mlp(depth=3)  # 9 modules
    seq = bnn.CheckpointedSequential(*copy.deepcopy(list(plain)), segments=segments,
                                     policy=policy)
    x = torch.randn(6, 16, dtype=torch.float64)
    _assert_identical(_run(seq, x), _run(plain, x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_lower_precision_matches_plain(dtype):
    plain = _mlp(dtype=dtype)
    x = torch.randn(10, 16).to(dtype)
    (y0, g0), (y1, g1) = _run(plain, x), _run(bnn.Checkpoint(plain, policy="selective"), x)
    torch.testing.assert_close(y1, y0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


def test_backward_and_inputs_without_grad():
    plain = _mlp(dropout=0.0)
    ckpt = bnn.Checkpoint(copy.deepcopy(plain))
    x = torch.randn(4, 16, dtype=torch.float64)  # does not require grad
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    for a, b in zip(plain.parameters(), ckpt.parameters()):
        assert torch.equal(a.grad, b.grad)
    _assert_identical(_run(ckpt, x, grad_of_input=False), _run(plain, x, grad_of_input=False))


def test_no_grad_mode_is_a_plain_call():
    ckpt = bnn.Checkpoint(_mlp(dropout=0.0), policy="selective")
    with torch.no_grad():
        y = ckpt(torch.randn(3, 16, dtype=torch.float64))
    assert y.grad_fn is None


class _KwargBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8, dtype=torch.float64)

    def forward(self, x, *, shift=None, scale=1.0, debug=False):
        y = bnn.GELU()(self.lin(x)) * scale
        return y + shift if shift is not None else y


@pytest.mark.parametrize("policy", POLICIES)
def test_keyword_arguments(policy):
    block = _KwargBlock()
    ckpt = bnn.Checkpoint(block, policy=policy)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(8, dtype=torch.float64, requires_grad=True)
    expected = torch.autograd.grad(block(x, shift=shift, scale=2.0).sum(), [x, shift])
    got = torch.autograd.grad(ckpt(x, shift=shift, scale=2.0).sum(), [x, shift])
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    # A keyword named like one of torch.utils.checkpoint's own goes to the module.
    got = torch.autograd.grad(ckpt(x, shift=shift, scale=2.0, debug=True).sum(), [x, shift])
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("outer", POLICIES)
@pytest.mark.parametrize("inner", POLICIES)
def test_nested(outer, inner):
    plain = torch.nn.Sequential(_mlp(depth=2), _mlp(depth=2))
    nested = bnn.Checkpoint(torch.nn.Sequential(bnn.Checkpoint(copy.deepcopy(plain[0]),
                                                               policy=inner),
                                                copy.deepcopy(plain[1])), policy=outer)
    x = torch.randn(5, 16, dtype=torch.float64)
    _assert_identical(_run(nested, x), _run(plain, x))


@pytest.mark.parametrize("policy", POLICIES)
def test_autocast_cpu(policy):
    plain = _mlp(dtype=torch.float32)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _run(plain, x)
        got = _run(bnn.Checkpoint(plain, policy=policy), x)
    assert got[0].dtype == torch.bfloat16
    _assert_identical(got, expected)


def test_custom_policies():
    plain = _mlp()
    x = torch.randn(4, 16, dtype=torch.float64)
    expected = _run(plain, x)
    keep_mm = [torch.ops.aten.addmm.default]
    _assert_identical(_run(bnn.Checkpoint(plain, policy=keep_mm), x), expected)
    _assert_identical(_run(bnn.Checkpoint(plain, policy=selective_policy), x), expected)
    y = checkpoint(plain, x.requires_grad_(), policy="none")
    assert y.grad_fn is not None


def test_selective_refuses_inplace_update_of_a_kept_output():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True),
                                torch.nn.Linear(8, 2))
    y = bnn.Checkpoint(model, policy="selective")(torch.randn(3, 8, requires_grad=True))
    with pytest.raises(RuntimeError, match="has been mutated"):
        y.sum().backward()
    bnn.Checkpoint(model, policy="full")(torch.randn(3, 8)).sum().backward()  # "full" is fine


def test_full_is_twice_differentiable_selective_backwards_once():
    w = torch.randn(5, 5, dtype=torch.float64)

    def fn(x):
        return bnn.GELU()(x @ w).sin()

    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: checkpoint(fn, t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: checkpoint(fn, t), (x,))
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda t: checkpoint(fn, t), (x.detach(),), (tangent,))
    _, jvp_ref = torch.func.jvp(fn, (x.detach(),), (tangent,))
    torch.testing.assert_close(jvp, jvp_ref)
    y = checkpoint(fn, x, policy="selective").sum()
    y.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward an extra time"):
        y.backward()


# --- what is kept and what is recomputed


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))

    def count(self, *names):
        return sum(self.counts.get(n, 0) for n in names)


@pytest.mark.parametrize("policy", ["none", "full", "selective"])
def test_selective_recomputes_activations_but_no_gemm(policy):
    depth = 4
    model = bnn.Checkpoint(_mlp(depth=depth, dropout=0.0), policy=policy)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    with _OpCounter() as ops:
        model(x).sum().backward()
    gemms = ops.count("mm", "addmm")
    activations = ops.count("activation_fwd")
    # Plain: one GEMM per layer forward, two per layer backward (grad input and grad weight;
    # the first layer's input needs a gradient too).
    plain_gemms = depth + 2 * depth
    if policy == "full":
        assert gemms == plain_gemms + depth and activations == 2 * depth
    elif policy == "selective":
        assert gemms == plain_gemms and activations == 2 * depth
    else:
        assert gemms == plain_gemms and activations == depth


def _stack(policy, depth=8, width=64):
    mods = [m for _ in range(depth) for m in (torch.nn.Linear(width, width), bnn.GELU())]
    return bnn.CheckpointedSequential(*mods, policy=policy)


def test_memory_falls_saved_tensor_bytes():
    x = torch.randn(256, 64)
    saved = {}
    for policy in ("none", "selective", "full"):
        model = _stack(policy)
        with SavedTensorBytes() as s:
            y = model(x)
        y.sum().backward()
        saved[policy] = s.bytes
    act, weight = 256 * 64 * 4, 64 * 64 * 4
    # Plain: each Linear keeps its input and weight, each GELU its input; the first Linear needs
    # no weight, as x needs no gradient.
    assert saved["none"] == 16 * act + 7 * weight
    assert saved["full"] < saved["selective"] < saved["none"]
    assert saved["full"] <= saved["none"] / 2


def test_memory_falls_peak_live_bytes():
    x = torch.randn(256, 64)
    peak = {}
    for policy in ("none", "selective", "full"):
        model = _stack(policy, depth=16)
        with LiveTensorMemory() as mem:
            model(x).sum().backward()
        peak[policy] = mem.peak
    assert peak["full"] < peak["selective"] < peak["none"]
    assert peak["full"] < 0.7 * peak["none"]


def test_live_tensor_memory_counts_new_storages_only():
    # Views, in-place and out= results of tensors made before the context are no new memory;
    # a fresh result is, once, until it is freed.
    w, out = torch.randn(256, 128), torch.empty(256, 256)
    with LiveTensorMemory() as mem:
        views = (w.t(), w.view(-1), w[:10], w.reshape(128, 256))
        w.mul_(1.0)
        torch.mm(w, w.t(), out=out)
    assert mem.peak == 0 and len(views) == 4
    with LiveTensorMemory() as mem:
        y = w.t() @ w  # 128 x 128 floats
        y.t().add_(1.0)
        del y
        z = w + 1
    assert mem.peak == z.untyped_storage().nbytes() == 128 * 1024 and mem.live == 128 * 1024


@pytest.mark.cuda
def test_cuda_max_memory_allocated_falls():
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16)
    peaks, outs = {}, {}
    for policy in ("none", "selective", "full"):
        torch.manual_seed(0)
        model = _stack(policy, depth=16, width=1024).to("cuda", torch.bfloat16)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = model(x)
        y.float().sum().backward()
        torch.cuda.synchronize()
        peaks[policy] = torch.cuda.max_memory_allocated() - base
        outs[policy] = (y.detach(), model[0].weight.grad)
        del model, y
    assert peaks["full"] < peaks["selective"] < peaks["none"]
    for policy in ("selective", "full"):
        torch.testing.assert_close(outs[policy][0], outs["none"][0])
        torch.testing.assert_close(outs[policy][1], outs["none"][1])


@pytest.mark.cuda
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_matches_plain_with_dropout(policy):
    plain = _mlp(dtype=torch.float32, device="cuda")
    x = torch.randn(32, 16, device="cuda")
    (y0, g0), (y1, g1) = _run(plain, x), _run(bnn.Checkpoint(plain, policy=policy), x)
    torch.testing.assert_close(y1, y0)  # same dropout masks: a different one would be far off
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


# --- torch.compile


@pytest.mark.parametrize("policy", POLICIES)
def test_compile_fullgraph(policy):
    plain = _mlp(dtype=torch.float32)
    x = torch.randn(8, 16)
    expected = _run(plain, x)
    compiled = torch.compile(bnn.Checkpoint(plain, policy=policy), fullgraph=True,
                             backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = _run(compiled, x)
    torch.testing.assert_close(got[0], expected[0])
    for a, b in zip(got[1], expected[1]):
        torch.testing.assert_close(a, b)


# --- module surface


def test_state_dict_keys():
    inner = _mlp(dropout=0.0)
    ckpt = bnn.Checkpoint(copy.deepcopy(inner))
    assert list(ckpt.state_dict()) == list(inner.state_dict())
    ckpt.load_state_dict(inner.state_dict())  # strict: same keys
    nested = torch.nn.Sequential(bnn.Checkpoint(bnn.Checkpoint(torch.nn.Linear(2, 3))),
                                 torch.nn.Linear(3, 1))
    plain = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    assert list(nested.state_dict()) == list(plain.state_dict()) == ["0.weight", "0.bias",
                                                                      "1.weight", "1.bias"]
    nested.load_state_dict(plain.state_dict())
    assert torch.equal(nested[0].weight, plain[0].weight)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        nested.load_state_dict({**plain.state_dict(), "0.extra": torch.ones(1)})

    seq = bnn.CheckpointedSequential(*copy.deepcopy(list(inner)), segments=2)
    assert list(seq.state_dict()) == list(inner.state_dict())
    seq.load_state_dict(inner.state_dict())
    assert isinstance(seq, torch.nn.Sequential) and isinstance(seq[1:], bnn.CheckpointedSequential)


def test_attribute_passthrough_and_repr():
    lin = torch.nn.Linear(3, 4)
    ckpt = bnn.Checkpoint(lin, policy="selective")
    assert ckpt.weight is lin.weight and ckpt.in_features == 3
    assert "policy='selective'" in repr(ckpt) and "Linear" in repr(ckpt)
    seq = _stack("full", depth=16)
    assert seq.segment_bounds() == [(0, 6), (6, 12), (12, 17), (17, 22), (22, 27), (27, 32)]
    assert "segments=6, policy='full'" in repr(seq)
    assert bnn.CheckpointedSequential(torch.nn.ReLU(), segments=5).segment_bounds() == [(0, 1)]
    copy.deepcopy(ckpt)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="policy must be one of"):
        bnn.Checkpoint(torch.nn.ReLU(), policy="some")
    with pytest.raises(TypeError, match="expected an nn.Module"):
        bnn.Checkpoint(lambda x: x)
    with pytest.raises(ValueError, match="segments must be a positive integer"):
        bnn.CheckpointedSequential(torch.nn.ReLU(), segments=0)
    with pytest.raises(TypeError, match="policy must be one of"):
        checkpoint(torch.relu, torch.randn(2), policy=3)
