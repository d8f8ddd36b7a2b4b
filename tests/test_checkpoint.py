"""Checkpoint, CheckpointedSequential and the memory-budget planner: the same results and
gradients as the plain run (bit for bit on CPU, dropout included), the memory each policy keeps
(saved-tensor bytes and peak live bytes on CPU, counted from first principles), what is and is
not recomputed, the planner's choices against a brute-force search and its predictions against
measurements, and the autograd/compile/state_dict surface of a drop-in layer."""

import copy
import functools
import gc
import itertools
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import backprop_ext.checkpoint.api as ckpt_module
import backprop_ext.nn as bnn
from backprop_ext.checkpoint import checkpoint, selective_policy
from backprop_ext.checkpoint import planner as _planner
from backprop_ext.checkpoint import recompute as _recompute
from backprop_ext.checkpoint.memory import (
    AllocatorPeak,
    LiveTensorMemory,
    SavedTensorBytes,
    StepProfile,
    cpu_peak_bytes,
    profile_sequential,
)
from backprop_ext.checkpoint.recompute import SavedRecord
from backprop_ext.ops.linear import parse_activation

POLICIES = ["full", "selective", "full+selective"]


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


def _fused_stack(depth, width, activation, dtype=torch.float32):
    torch.manual_seed(0)
    return [bnn.Linear(width, width, activation=activation, dtype=dtype) for _ in range(depth)]


@pytest.mark.parametrize("activation", ["gelu", ("gelu", "tanh"), "silu", ("softplus", 2.0, 5.0),
                                        ("leaky_relu", 0.2)])
@pytest.mark.parametrize("width", [64, 67])
def test_fused_linear_blocks_bitwise_plain(activation, width):
    # 64 columns fill whole vectors at any vector width, and 16 x 64 elements stay below one
    # thread's share: the fused output is rebuilt exactly, so it must be rebuilt (memory falls).
    # 67 leaves each row a scalar tail: rebuilt only where the kernels agree bit for bit there;
    # either way the result must be identical.
    x = torch.randn(16, width)
    plain = torch.nn.Sequential(*_fused_stack(4, width, activation))
    expected = _run(plain, x)
    for policy in ("selective", "full+selective"):
        seq = bnn.CheckpointedSequential(*_fused_stack(4, width, activation), policy=policy,
                                         segments=2)
        _assert_identical(_run(seq, x), expected)
    with SavedTensorBytes() as plain_saved:
        plain(x)
    with SavedTensorBytes() as sel_saved:
        bnn.Checkpoint(plain, policy="selective")(x)
    act = 16 * width * 4
    name, p0, p1 = parse_activation(activation)
    exact = _recompute._fused_rebuild_is_exact(name, p0, p1, torch.empty(16, width))
    assert width != 64 or exact
    # Each layer but the first saves its input, the previous layer's output: rebuilt if exact.
    assert plain_saved.bytes - sel_saved.bytes == (3 * act if exact else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("policy", POLICIES)
def test_lower_precision_is_bitwise_plain(dtype, policy):
    plain = _mlp(dtype=dtype)
    x = torch.randn(10, 16).to(dtype)
    _assert_identical(_run(bnn.Checkpoint(plain, policy=policy), x), _run(plain, x))


def test_backward_and_inputs_without_grad():
    plain = _mlp(dropout=0.0)
    for policy in POLICIES:
        ckpt = bnn.Checkpoint(copy.deepcopy(plain), policy=policy)
        x = torch.randn(4, 16, dtype=torch.float64)  # does not require grad
        plain.zero_grad()
        plain(x).sum().backward()
        ckpt(x).sum().backward()
        for a, b in zip(plain.parameters(), ckpt.parameters()):
            assert torch.equal(a.grad, b.grad)
        _assert_identical(_run(ckpt, x, grad_of_input=False),
                          _run(plain, x, grad_of_input=False))


@pytest.mark.parametrize("policy", POLICIES)
def test_no_grad_mode_is_a_plain_call(policy):
    ckpt = bnn.Checkpoint(_mlp(dropout=0.0), policy=policy)
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


def test_inplace_activation_before_saving_is_kept():
    # ReLU(inplace=True) rewrites the GEMM output before anything saves it: nothing to rebuild,
    # every policy matches the plain run. (torch's selective checkpointing refuses this.)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(inplace=True),
                                torch.nn.Linear(8, 8), bnn.GELU(), torch.nn.Linear(8, 2))
    model = model.double()
    x = torch.randn(3, 8, dtype=torch.float64)
    for policy in POLICIES:
        _assert_identical(_run(bnn.Checkpoint(model, policy=policy), x), _run(model, x))
    y = bnn.Checkpoint(model, policy=selective_policy)(x.requires_grad_())
    with pytest.raises(RuntimeError, match="has been mutated"):
        y.sum().backward()


def test_inplace_update_after_saving_raises_like_autograd():
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)

    def fn(x):
        z = x @ w
        y = bnn.GELU()(z)  # saves z
        z.mul_(2)  # then z changes: backward can no longer use it
        return y

    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        fn(x).sum().backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        checkpoint(fn, x, policy="selective").sum().backward()


@pytest.mark.parametrize("policy", POLICIES)
def test_twice_differentiable_and_forward_ad(policy):
    w = torch.randn(5, 5, dtype=torch.float64)

    def fn(x):
        return (bnn.GELU()(x @ w) @ w).sin()

    run = functools.partial(checkpoint, fn, policy=policy)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (x,))
    assert torch.autograd.gradgradcheck(run, (x,))
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(run, (x.detach(),), (tangent,))
    _, jvp_ref = torch.func.jvp(fn, (x.detach(),), (tangent,))
    torch.testing.assert_close(jvp, jvp_ref)
    # A retained graph backwards again, to the same gradient.
    y = run(x).sum()
    (g1,) = torch.autograd.grad(y, x, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("policy", POLICIES)
def test_torch_func_transforms_run(policy):
    # torch.func.grad cannot run saved-tensor hooks (on any torch): the region runs plainly.
    w = torch.randn(5, 5, dtype=torch.float64)

    def fn(x):
        return bnn.GELU()(x @ w).sin().sum()

    x = torch.randn(3, 5, dtype=torch.float64)
    expected = torch.func.grad(fn)(x)
    torch.testing.assert_close(torch.func.grad(functools.partial(checkpoint, fn,
                                                                 policy=policy))(x), expected)

    def torch_fn(x):  # our activations have no vmap rule; the region's under test here
        return torch.nn.functional.gelu(x @ w).sin().sum()

    batched = torch.func.vmap(functools.partial(checkpoint, torch_fn, policy=policy))(x[:, None])
    torch.testing.assert_close(batched, torch.func.vmap(torch_fn)(x[:, None]))


@pytest.mark.parametrize("policy", POLICIES)
def test_forward_ad_where_torch_checkpoint_cannot(policy, monkeypatch):
    # On torch 2.11 torch.utils.checkpoint has no jvp rule; pretend this torch is such a one.
    ckpt_module._torch_checkpoint_runs_under.cache_clear()
    monkeypatch.setattr(ckpt_module, "_torch_checkpoint_runs_under", lambda transform: False)
    w = torch.randn(5, 5, dtype=torch.float64)

    def fn(x):
        return bnn.GELU()(x @ w).sin()

    x, t = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    run = functools.partial(checkpoint, fn, policy=policy)
    torch.testing.assert_close(torch.func.jvp(run, (x,), (t,))[1],
                               torch.func.jvp(fn, (x,), (t,))[1])
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = fwAD.unpack_dual(run(fwAD.make_dual(x, t))).tangent
        ref = fwAD.unpack_dual(fn(fwAD.make_dual(x, t))).tangent
    torch.testing.assert_close(out, ref)
    assert ckpt_module._effective_policy(policy, (x,), {}) == policy  # no transform: as asked


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


@pytest.mark.parametrize("policy", ["none", "full", "selective", "full+selective"])
def test_what_is_recomputed(policy):
    depth = 4
    model = bnn.Checkpoint(_mlp(depth=depth, dropout=0.0), policy=policy)
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    with _OpCounter() as ops:
        model(x).sum().backward()
    gemms = ops.count("mm", "addmm")
    activations = ops.count("activation_fwd")
    # Plain: one GEMM per layer forward, two per layer backward (grad input and grad weight;
    # the first layer's input needs a gradient too). "full" re-runs the forward (early stop:
    # up to the last saved tensor, the last activation's input). "selective" rebuilds each
    # activation output the next layer saved: all but the last.
    plain_gemms = depth + 2 * depth
    expected = {"none": (plain_gemms, depth),
                "full": (plain_gemms + depth, 2 * depth),
                "selective": (plain_gemms, depth + depth - 1),
                "full+selective": (plain_gemms + depth, 2 * depth + depth - 1)}[policy]
    assert (gemms, activations) == expected


def test_full_runs_exactly_torch_checkpoint():
    # No tax for wrapping: Checkpoint(block, "full") issues the same ops as
    # torch.utils.checkpoint.checkpoint(block, use_reentrant=False).
    blocks = [torch.nn.Sequential(torch.nn.Linear(16, 16), bnn.GELU()).double() for _ in range(3)]
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    counts = []
    for wrap in (bnn.Checkpoint,
                 lambda b: functools.partial(torch.utils.checkpoint.checkpoint, b,
                                             use_reentrant=False)):
        fns = [wrap(b) for b in blocks]
        x.grad = None
        for b in blocks:
            b.zero_grad(set_to_none=True)
        with _OpCounter() as ops:
            y = x
            for f in fns:
                y = f(y)
            y.sum().backward()
        counts.append(ops.counts)
    assert counts[0] == counts[1]


def _stack(policy=None, depth=8, width=64, fused=False, **kwargs):
    torch.manual_seed(0)
    if policy is not None:
        kwargs["policy"] = policy
    if fused:
        mods = [bnn.Linear(width, width, activation=("gelu", "tanh")) for _ in range(depth)]
    else:
        mods = [m for _ in range(depth)
                for m in (torch.nn.Linear(width, width), bnn.GELU(approximate="tanh"))]
    return bnn.CheckpointedSequential(*mods, **kwargs)


def test_selective_saved_tensor_bytes():
    # Counted from first principles (batch 256, width 64, float32, depth 8; x needs no grad).
    batch, width, depth = 256, 64, 8
    act, weight = batch * width * 4, width * width * 4
    x = torch.randn(batch, width)
    saved = {}
    for fused in (False, True):
        for policy in ("none", "selective"):
            with SavedTensorBytes() as s:
                y = _stack(policy, depth, width, fused)(x)
            y.sum().backward()
            saved[fused, policy] = s.bytes
    # Plain, two modules: each Linear keeps its input (x for the first), each GELU its input;
    # torch's Linear keeps its weight only where its input needs a gradient (not the first).
    assert saved[False, "none"] == 2 * depth * act + (depth - 1) * weight
    # Selective keeps each GEMM output, and x: every Linear input but x is rebuilt.
    assert saved[False, "selective"] == (depth + 1) * act + (depth - 1) * weight
    # Fused: each layer keeps input, weight and pre-activation.
    assert saved[True, "none"] == 2 * depth * act + depth * weight
    assert saved[True, "selective"] == (depth + 1) * act + depth * weight


def test_selective_per_block_saves_like_one_region():
    x = torch.randn(128, 64)
    saved = []
    for per_block in (False, True):
        seq = _stack("none", depth=6)
        model = (torch.nn.Sequential(*[bnn.Checkpoint(torch.nn.Sequential(seq[i], seq[i + 1]),
                                                      policy="selective")
                                       for i in range(0, len(seq), 2)])
                 if per_block else bnn.Checkpoint(seq, policy="selective"))
        with SavedTensorBytes() as s:
            model(x)
        saved.append(s.bytes)
    assert saved[0] == saved[1]


def _live_peak(model, x):
    """Peak bytes held by tensors one step creates, with the gradients already allocated (as a
    training loop's second step finds them): activations and the backward's temporaries."""
    model(x).sum().backward()
    with LiveTensorMemory() as mem:
        model(x).sum().backward()
    return mem.peak


def test_peak_live_bytes_per_policy():
    # 16 x (Linear + GELU tanh), batch 256, width 64: the workload, scaled down. In units
    # of one activation: plain keeps 31 (x excluded: it existed before) plus the backward's few
    # temporaries; selective keeps 16; full+selective in 4 segments of 8 modules keeps the 3
    # segment inputs and at most one segment's 4 GEMM outputs; full in 4 segments keeps the 3
    # inputs, and one segment's 8 saved tensors at a time.
    x = torch.randn(256, 64)
    act = 256 * 64 * 4
    peak = {p: _live_peak(_stack(p, depth=16, segments=4), x)
            for p in ("none", "selective", "full", "full+selective")}
    temporaries = peak["none"] - 31 * act
    assert 0 <= temporaries <= 6 * act
    assert peak["selective"] <= 16 * act + temporaries + act
    assert peak["full"] <= (3 + 8) * act + temporaries + act
    assert peak["full+selective"] <= (3 + 4) * act + temporaries + act
    assert peak["full+selective"] < peak["full"] < peak["selective"] < peak["none"]
    assert peak["selective"] <= 0.6 * peak["none"]
    assert peak["full+selective"] <= 0.35 * peak["none"]


def test_rebuild_bookkeeping_is_released():
    x = torch.randn(32, 64)
    model = _stack("selective", depth=4)
    model(x).sum().backward()  # warm: the probe and caches
    gc.collect()
    before = (len(_recompute._products), len(_recompute._pending), len(_recompute._kept))
    for _ in range(3):
        model(x).sum().backward()
    gc.collect()
    assert (len(_recompute._products), len(_recompute._pending), len(_recompute._kept)) == before


def test_allocator_peak_counts_buffers_inside_kernels():
    with AllocatorPeak() as mem:
        t = torch.empty(1 << 20)
        del t
    assert mem.peak == 4 << 20 and mem.live == 0
    # linear_bwd with an activation makes the pre-activation's gradient inside itself: the
    # tensors it returns do not show it; the allocator does.
    ops = torch.ops.backprop_ext
    g, x, w, z = torch.randn(64, 32), torch.randn(64, 16), torch.randn(32, 16), torch.randn(64, 32)
    args = (g, x, w, z, "gelu", 0.0, 0.0, [True, True, True])
    with LiveTensorMemory() as live:
        outs = ops.linear_bwd(*args)
    del outs
    with AllocatorPeak() as alloc:
        outs = ops.linear_bwd(*args)
    assert alloc.peak >= live.peak + g.nbytes
    assert alloc.live == sum(o.untyped_storage().nbytes() for o in outs)


def test_cpu_peak_bytes_under_a_profiler_counts_live_tensors():
    # One profiler state per thread: under torch's profiler the meter refuses, and
    # cpu_peak_bytes falls back to LiveTensorMemory.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        with pytest.raises(RuntimeError, match="while a profiler is active"):
            AllocatorPeak().__enter__()
        assert cpu_peak_bytes(lambda: torch.ones(1 << 10) + 1) == 8 << 10
    assert not torch.autograd.profiler._is_profiler_enabled
    # Nor can two meters share the thread: one around a step that meters itself (a budgeted
    # stack planning on its first forward) leaves the inner one to count live tensors.
    inner = []
    outer = cpu_peak_bytes(lambda: inner.append(cpu_peak_bytes(lambda: torch.ones(1 << 10) + 1)))
    assert inner == [8 << 10] and outer >= 8 << 10


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
    for policy in ("none", "selective", "full", "full+selective"):
        model = _stack(policy, depth=16, width=1024, segments=4).to("cuda", torch.bfloat16)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        y = model(x)
        y.float().sum().backward()
        torch.cuda.synchronize()
        peaks[policy] = torch.cuda.max_memory_allocated() - base
        outs[policy] = (y.detach(), model[0].weight.grad)
        del model, y
    assert peaks["full+selective"] < peaks["full"] < peaks["selective"] < peaks["none"]
    for policy in ("selective", "full", "full+selective"):
        assert torch.equal(outs[policy][0], outs["none"][0])
        torch.testing.assert_close(outs[policy][1], outs["none"][1])  # cuBLAS may pick otherwise


@pytest.mark.cuda
@pytest.mark.parametrize("policy", POLICIES)
def test_cuda_matches_plain_with_dropout(policy):
    plain = _mlp(dtype=torch.float32, device="cuda")
    x = torch.randn(32, 16, device="cuda")
    (y0, g0), (y1, g1) = _run(plain, x), _run(bnn.Checkpoint(plain, policy=policy), x)
    assert torch.equal(y1, y0)  # the same dropout masks
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


# --- the memory-budget planner


def _profile(nbytes, savers, producers, sources, outputs, forward_s, rebuild_s):
    records = [SavedRecord(b, p, list(s)) for b, s, p in zip(nbytes, savers, producers)]
    for r, src in zip(records, sources):
        r.source = records[src] if src is not None else None
    return StepProfile(records=records,
                       rebuild_s={id(r): t for r, t in zip(records, rebuild_s) if t},
                       output_bytes=outputs, forward_s=forward_s, saved_bytes=sum(nbytes),
                       peak_bytes=sum(nbytes), device="cpu")


def _synthetic_profile(n_blocks):
    """Linear + GELU blocks as the profiler sees them: module 2i (Linear) saves its input, the
    output of module 2i - 1 (rebuildable from GELU 2i - 1's input); module 2i + 1 (GELU) saves
    the GEMM output made by module 2i."""
    nbytes, savers, producers, sources, rebuild = [], [], [], [], []
    for b in range(n_blocks):
        lin, gelu = 2 * b, 2 * b + 1
        if b > 0:  # the first Linear's input existed before the step: not a record
            nbytes.append(100)
            savers.append([lin])
            producers.append(lin - 1)
            sources.append(len(nbytes) - 2)  # the previous GELU's input record
            rebuild.append(1.0)
        nbytes.append(100)
        savers.append([gelu])
        producers.append(lin)
        sources.append(None)
        rebuild.append(0.0)
    n = 2 * n_blocks
    return _profile(nbytes, savers, producers, sources, [100] * n,
                    [10.0 if i % 2 == 0 else 1.0 for i in range(n)], rebuild)


def _all_plans(n):
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [n]
        spans = list(itertools.pairwise(bounds))
        for levels in itertools.product(_planner.LEVELS, repeat=len(spans)):
            # Neighbouring "none" or "selective" segments run as one: that plan is the merged one.
            if any(a == b and a in ("none", "selective") for a, b in itertools.pairwise(levels)):
                continue
            yield [(a, b, level) for (a, b), level in zip(spans, levels)]


def test_planner_is_the_brute_force_optimum():
    profile = _synthetic_profile(3)  # 6 modules: 32 cuts x up to 4^6 level choices
    costs = _planner._Costs(profile)
    plans = [(*costs.evaluate(p), p) for p in _all_plans(6)]
    for budget in (700, 550, 500, 400, 300, 250, 200):
        plan = _planner.choose(profile, budget)
        fitting = [p for p in plans if p[0] <= budget]
        assert plan.fits == bool(fitting)
        if fitting:
            assert plan.recompute_s == min(p[1] for p in fitting)
            assert plan.predicted_bytes <= budget
        else:
            assert plan.predicted_bytes == min(p[0] for p in plans)
        assert costs.evaluate(plan.segments) == (plan.predicted_bytes, plan.recompute_s)


def test_planner_model_on_linear_gelu_blocks():
    profile = _synthetic_profile(4)
    assert _planner.describe(profile, [(0, 8, "none")]).predicted_bytes == 700
    assert _planner.describe(profile, [(0, 8, "selective")]).predicted_bytes == 400
    # Two full segments: the second's input kept, while the first is re-run (its 3 saves).
    # Two segments, the first re-run in backward: its input existed before the step, so it keeps
    # nothing; the second keeps its 4 saves (its input among them) and the first, re-run, 3.
    full = _planner.describe(profile, [(0, 4, "full"), (4, 8, "none")])
    assert full.predicted_bytes == 400 and full.recompute_s == 22.0
    # Selective inside: the re-run holds the GEMM outputs only; the second segment's input
    # comes from the first segment's (discarded) run, so it is kept, not rebuilt.
    deep = _planner.describe(profile, [(0, 4, "full+selective"), (4, 8, "selective")])
    assert deep.predicted_bytes == 300 and deep.recompute_s == 22.0 + 1.0 + 1.0
    late = _planner.describe(profile, [(0, 2, "none"), (2, 8, "full")])
    assert late.predicted_bytes == 100 + 100 + 500 and late.recompute_s == 33.0


def _deep_stack(**kwargs):
    return _stack(depth=8, width=64, **kwargs)


def _allocator_peak(model, x):
    """The CPU allocator's peak during one step of a training loop whose zero_grad() sets the
    gradients to None: they are allocated in the step, and count."""
    def step():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    step()
    return cpu_peak_bytes(step)


def test_budget_plans_fit_and_match_measurements():
    x = torch.randn(256, 64)
    plain = _deep_stack(policy="none")
    profile = profile_sequential(list(plain), x)
    act = 256 * 64 * 4
    assert profile.saved_bytes == 15 * act  # 8 GEMM outputs, 7 Linear inputs (x existed before)
    assert [r.source is not None for r in profile.records].count(True) == 7
    # The plain step's peak, the budget's unit: what it keeps, the gradients it makes (2 of
    # the 8 weights and biases' 2.03 activations' worth are alive at the peak, early in
    # backward) and backward's working set.
    assert profile.peak_bytes == _allocator_peak(plain, x)
    assert sum(profile.grad_bytes) == 8 * (64 * 64 + 64) * 4
    assert 15 * act < profile.peak_bytes <= 15 * act + 3 * act
    expected = _run(plain, x)
    peaks = {}
    for budget in (1.0, 0.65, 0.5, 0.45):  # the least-memory plan: about 0.4x
        seq = _deep_stack(memory_budget=budget)
        plan = seq.plan(x)
        assert plan.plain_bytes == profile.peak_bytes
        # Chosen by the model, checked by a measured step: within the budget as measured.
        assert plan.fits and plan.measured_bytes <= budget * profile.peak_bytes
        if budget == 1.0:
            assert plan.segments == [(0, 16, "none")] and plan.recompute_s == 0
        if budget == 0.5:  # selective does not fit (0.6x: 8 of 15 kept, the gradients, the
            # working set): some forward is re-run
            assert {level for *_, level in plan.segments} & {"full", "full+selective"}
        _assert_identical(_run(seq, x), expected)
        # The measurement is the step's, and the model is close to it: it takes backward's
        # working set to be the plain step's, which torch's Linear exceeds under selective by up
        # to a rebuilt input and a weight gradient (it holds the input while making the input
        # gradient; bnn.Linear frees it first): what the measured check is there for.
        peaks[budget] = _allocator_peak(seq, x)
        # The same step measured again: equal but for a page torch sometimes allocates in it.
        assert abs(peaks[budget] - plan.measured_bytes) <= 2 * 4096
        assert abs(peaks[budget] - plan.predicted_bytes) <= act + act // 4
    assert peaks[0.45] < peaks[0.65] < peaks[1.0] and peaks[0.5] < peaks[0.65]


def test_measured_choice_corrects_the_model():
    # A model that under-predicts every plan by one unit: the first choice measures over the
    # budget, the corrected one fits; one that over-predicts by one: the corrected choice
    # recomputes less than the first.
    profile = _synthetic_profile(4)
    costs = _planner._Costs(profile)
    for error in (100, -100):
        measured = []

        def measure(segments, error=error, measured=measured):
            measured.append(list(segments))
            return costs.evaluate(segments)[0] + error

        plan = _planner.choose_measured(profile, 400, measure)
        first = _planner.choose(profile, 400)
        assert plan.fits and plan.measured_bytes <= 400 and len(measured) >= 2
        assert plan.measured_bytes == plan.predicted_bytes + error
        if error < 0:
            assert plan.recompute_s < first.recompute_s
        else:
            assert first.predicted_bytes + error > 400
    assert "measured activation memory" in str(plan)


def test_budget_in_bytes_errors_and_repr():
    x = torch.randn(64, 64)
    act = 64 * 64 * 4
    # The plain step: 17 activations' worth (8 of them the gradients of the 8 layers).
    seq = _deep_stack(memory_budget=14 * act)
    assert "memory_budget" in repr(seq)
    y = seq(x)  # planned on the first forward
    assert seq.plan().fits and "predicted activation memory" in str(seq.plan())
    assert seq.segment_bounds() == [(a, b) for a, b, _ in seq.plan().segments]
    y.sum().backward()
    with pytest.warns(UserWarning, match="no plan fits"):
        tiny = _deep_stack(memory_budget=1)
        tiny(x)
    assert not tiny.plan().fits
    assert "does NOT fit" in str(tiny.plan())
    with pytest.raises(ValueError, match="not both"):
        _deep_stack(memory_budget=0.5, segments=2)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        _deep_stack(memory_budget=1.5)
    with pytest.raises(TypeError, match="argument 'memory_budget' .*must be"):
        _deep_stack(memory_budget="half")
    with pytest.raises(ValueError, match="pass an input"):
        _deep_stack(memory_budget=0.5).plan()
    # Without a budget: the configured plan, with predictions once given an input.
    fixed = _deep_stack(policy="full+selective", segments=4)
    assert fixed.plan().segments[-1] == (12, 16, "selective")
    assert fixed.plan().predicted_bytes is None
    assert fixed.plan(x).predicted_bytes < fixed.plan(x).plain_bytes


def test_profiling_leaves_no_trace():
    # Batch-norm statistics, the RNG (dropout), parameters' .grad and the caller's graph upstream
    # of the input are as they were; the metered backward makes the gradients afresh and then
    # puts back the ones there were.
    from backprop_ext.checkpoint.memory import _backward_with_fresh_gradients

    mods = [torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5), bnn.GELU(),
            torch.nn.Linear(8, 8)]
    upstream = torch.nn.Linear(8, 8)
    x = upstream(torch.randn(16, 8))
    grad = torch.ones(8, 8)
    mods[0].weight.grad = grad
    stats = mods[1].running_mean.clone()
    rng = torch.get_rng_state()
    profile_sequential(mods, x)
    assert torch.equal(mods[1].running_mean, stats) and torch.equal(torch.get_rng_state(), rng)
    assert mods[0].weight.grad is grad
    y = x.detach()
    for m in mods:
        y = m(y)
    _backward_with_fresh_gradients(y.sum(), mods)
    assert mods[0].weight.grad is grad and mods[4].weight.grad is None
    assert upstream.weight.grad is None
    x.sum().backward()  # the caller's graph is intact
    assert upstream.weight.grad is not None


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

    for kwargs in ({"segments": 2}, {"memory_budget": 0.5}):
        seq = bnn.CheckpointedSequential(*copy.deepcopy(list(inner)), **kwargs)
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
    with pytest.raises(TypeError, match="argument 'module' .*must be torch.nn.Module"):
        bnn.Checkpoint(lambda x: x)
    with pytest.raises(ValueError, match="segments must be a positive integer"):
        bnn.CheckpointedSequential(torch.nn.ReLU(), segments=0)
    with pytest.raises(TypeError, match="policy must be one of"):
        checkpoint(torch.relu, torch.randn(2), policy=3)


# --- the benchmark


def test_bench_family_runs_and_plots(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from backprop_ext.__main__ import main
    from backprop_ext.benchmarks import bench_checkpoint

    monkeypatch.setitem(bench_checkpoint.DEFAULT_MLP, "cpu",
                        dict(depth=4, batch=32, width=32, dtype="float32"))
    monkeypatch.setattr(bench_checkpoint, "SEGMENTS", (2,))
    monkeypatch.setattr(bench_checkpoint, "BUDGETS", (0.5,))
    png = tmp_path / "ckpt.png"
    assert main(["bench", "--family", "checkpoint", "--device", "cpu", "--reps", "1",
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for variant in ("torch ckpt every block", "full every block", "selective every block",
                    "full+selective 2 segments", "budget 0.5"):
        assert out.count(variant) >= 4  # two workloads, in both tables
    assert "memory vs plain" in out and png.stat().st_size > 0
