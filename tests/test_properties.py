"""Property tests: every op against torch on random shapes, dims, dtypes, layouts and values.

Each test draws its cases with hypothesis (derandomized: the same cases on every run and
machine; no example database) and checks, for ours against torch's op in the same dtype and the
float64 reference (backprop_ext.testing's rule, the reference rounded to the result's dtype so
that a value beyond the dtype's range is inf on every side):
  * the forward result and every input gradient;
  * that no op writes its inputs: the storage under every input (views included) is bit for
    bit the same after forward and after backward, as are the output (which backward may have
    saved) and the incoming gradient; the clipping ops, which update gradients in place, write
    nothing else, not even the storage around a gradient that is a view.
Inputs come in every layout an op may meet: contiguous, permuted, strided (every other element),
at a storage offset (odd: not 16-byte aligned), and expanded where the op only reads. Values are
normal at a drawn scale (1, 1e-3, 30, or the dtype's max^0.6 or tiny^0.6, whose squares leave its
range), with drawn kinds of special values sprinkled in: +-inf, NaN, zeros, the dtype's huge
(+-1e4 in float16, a quarter of the largest finite value otherwise) and tiny (smallest normal,
subnormal) values.

The examples per test are sized so that the whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import dataclasses
import math

import hypothesis
import torch
import torch.nn.functional as TF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backprop_ext.functional as BF
import backprop_ext.utils as BU
from backprop_ext.testing import ACTIVATION_CASES, DTYPES, LINEAR_CASES, ActivationCase, compare


def _settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}


# --- inputs


@dataclasses.dataclass
class Input:
    """A tensor handed to an op: `view(leaf)`, where `leaf` owns the storage (and is what
    gradients are taken with respect to)."""

    leaf: torch.Tensor
    layout: str
    view_fn: object

    def view(self, leaf=None) -> torch.Tensor:
        return self.view_fn(self.leaf if leaf is None else leaf)

    def fresh(self, dtype=None, requires_grad=False) -> tuple[torch.Tensor, torch.Tensor]:
        """(leaf, view) on a copy of the storage, in `dtype` if given."""
        leaf = self.leaf.detach().clone().to(dtype or self.leaf.dtype)
        leaf.requires_grad_(requires_grad)
        return leaf, self.view(leaf)


def _special_values(dtype: torch.dtype) -> dict[str, list[float]]:
    info = torch.finfo(dtype)
    huge = 1e4 if dtype == torch.float16 else info.max / 4
    return {"inf": [math.inf, -math.inf], "nan": [math.nan], "zero": [0.0, -0.0],
            "huge": [huge, -huge], "tiny": [info.tiny, -info.tiny, info.smallest_normal / 8]}


@st.composite
def values(draw, shape, dtype):
    """A tensor of `shape`: normal values at a drawn scale with drawn special values mixed in."""
    seed = draw(st.integers(0, 2**31 - 1))
    info = torch.finfo(dtype)
    # max^0.6 and tiny^0.6: values in range whose squares are not (for float16, whose math
    # runs in float32, merely large and small).
    scale = draw(st.sampled_from([1.0, 1e-3, 30.0, info.max ** 0.6, info.tiny ** 0.6]))
    kinds = draw(st.lists(st.sampled_from(["inf", "nan", "zero", "huge", "tiny"]), max_size=2,
                          unique=True))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scale
    if kinds and x.numel():
        specials = [v for k in kinds for v in _special_values(dtype)[k]]
        flat = x.view(-1)
        where = torch.rand(flat.shape, generator=g) < 0.2
        picks = torch.randint(len(specials), flat.shape, generator=g)
        flat[where] = torch.tensor(specials, dtype=torch.float64)[picks[where]]
    return x.to(dtype)


@st.composite
def inputs(draw, shape, dtype, expand_ok=True, value_strategy=None):
    """An Input of `shape` in one of the layouts (see the module docstring)."""
    shape = tuple(shape)
    layouts = ["contiguous", "permuted", "strided", "offset"]
    if expand_ok and any(s != 1 for s in shape):
        layouts.append("expanded")
    layout = draw(st.sampled_from(layouts))
    ndim = len(shape)
    make = value_strategy or (lambda s: values(s, dtype))
    if layout == "permuted" and ndim >= 2:
        perm = draw(st.permutations(range(ndim)))
        inverse = [perm.index(d) for d in range(ndim)]
        leaf = draw(make([shape[d] for d in perm]))
        return Input(leaf, layout, lambda t: t.permute(inverse))
    if layout == "strided" and ndim >= 1:
        d = draw(st.integers(0, ndim - 1))
        big = list(shape)
        big[d] = 2 * shape[d]
        leaf = draw(make(big))
        return Input(leaf, layout, lambda t: t[(slice(None),) * d + (slice(None, None, 2),)])
    if layout == "offset":
        offset = draw(st.sampled_from([1, 3]))
        leaf = draw(make([math.prod(shape) + offset]))
        return Input(leaf, layout, lambda t: t[offset:].view(shape))
    if layout == "expanded" and expand_ok:
        d = draw(st.sampled_from([i for i, s in enumerate(shape) if s != 1]))
        small = list(shape)
        small[d] = 1
        leaf = draw(make(small))
        return Input(leaf, layout, lambda t: t.expand(shape))
    return Input(draw(make(list(shape))), "contiguous", lambda t: t)


def shapes(min_dims=0, max_dims=4, max_side=6):
    return st.lists(st.integers(0, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


dtypes = st.sampled_from(DTYPES)


# --- checks


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return (t.view(_INT_VIEW[t.dtype]) if t.is_floating_point() else t).clone()


class Unchanged:
    """Snapshots tensors' bits; check() asserts that none changed (NaN payloads included)."""

    def __init__(self, **tensors):
        self.tensors = {k: t for k, t in tensors.items() if t is not None}
        self.before = {k: _bits(t) for k, t in self.tensors.items()}

    def check(self, when: str):
        for k, t in self.tensors.items():
            assert torch.equal(_bits(t), self.before[k]), f"{k} was modified by {when}"


def _match(ours, theirs, ref, what, precision=None):
    """ours vs torch's same-dtype result and the float64 reference, rounded to torch's dtype (or
    to `precision`, a narrower dtype the result cannot be more accurate than)."""
    assert isinstance(ours, torch.Tensor), what
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} != torch's {theirs.dtype}"
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != torch's {theirs.shape}"
    dtype = precision or theirs.dtype
    c = compare(ours.detach().to(dtype), theirs.detach().to(dtype), ref.detach().to(dtype))
    assert c.ok, f"{what}: {c.message}"


def _grad(out, leaves, grad_out):
    leaves = [t for t in leaves if t is not None and t.requires_grad]
    return torch.autograd.grad(out, leaves, grad_out, allow_unused=True)


def _grad_output(out: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)


def _run_three(args_ours, args_torch, args_ref, grad_seed, what):
    """Ours, torch in the same dtype and torch in float64: each args_* is a (leaves, call) pair,
    call(leaves) -> output. Compares the outputs and the gradients w.r.t. the leaves that require
    grad; checks that ours writes no leaf, nor the output or the incoming gradient in backward."""
    (lo, call_o), (lt, call_t), (lr, call_r) = args_ours, args_torch, args_ref
    guard = Unchanged(**{f"input{i}": t for i, t in enumerate(lo)})
    out = call_o(lo)
    guard.check(f"{what} forward")
    theirs, ref = call_t(lt), call_r(lr)
    _match(out, theirs, ref, f"{what} forward")
    if not out.requires_grad:
        return
    g = _grad_output(out, grad_seed)
    out_guard = Unchanged(output=out, grad_output=g)
    grads = _grad(out, lo, g)
    guard.check(f"{what} backward")
    out_guard.check(f"{what} backward")
    grads_t = _grad(theirs, lt, g)
    grads_r = _grad(ref, lr, g.double())
    for i, (a, b, r) in enumerate(zip(grads, grads_t, grads_r)):
        if a is None or b is None:  # no gradient on one side: only where it would be all zeros
            assert (a is None and b is None) or r is None or not r.any(), f"{what} grad {i}"
            continue
        _match(a, b, r, f"{what} grad {i}")


def _leaves(inputs_, dtype=None):
    """Fresh leaves (requiring grad) for the inputs, None stays None."""
    return [inp.fresh(dtype, True)[0] if inp is not None else None for inp in inputs_]


def _views(inputs_, leaves):
    return [inp.view(leaf) if inp is not None else None for inp, leaf in zip(inputs_, leaves)]


def _three(inputs_, fn_ours, fn_torch, grad_seed, what, fn_ref=None):
    """The common case: a function of the inputs' views on three sets of leaves (fn_ref, the
    reference's function, defaults to fn_torch)."""
    lo, lt, lr = _leaves(inputs_), _leaves(inputs_), _leaves(inputs_, torch.float64)
    fn_ref = fn_ref or fn_torch
    _run_three((lo, lambda ls: fn_ours(*_views(inputs_, ls))),
               (lt, lambda ls: fn_torch(*_views(inputs_, ls))),
               (lr, lambda ls: fn_ref(*_views(inputs_, ls))),
               grad_seed, what)


# --- activations


def _activation_cases():
    """Every activation, with torch's defaults and with drawn parameters."""
    def with_kwargs(name, **kwargs):
        return ActivationCase(name, tuple(kwargs.items()))

    return st.one_of(
        st.sampled_from(ACTIVATION_CASES),
        st.builds(lambda s: with_kwargs("leaky_relu", negative_slope=s),
                  st.sampled_from([0.0, 0.01, 0.3, -0.5, 2.0])),
        st.builds(lambda b, t: with_kwargs("softplus", beta=b, threshold=t),
                  st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([1.0, 20.0])),
        st.builds(lambda a: with_kwargs("elu", alpha=a), st.sampled_from([0.0, 0.5, 2.0, -0.5])),
    )


@_settings(250)
@given(case=_activation_cases(), dtype=dtypes, data=st.data(),
       seed=st.integers(0, 2**31 - 1))
def test_activations(case, dtype, data, seed):
    x = data.draw(inputs(data.draw(shapes()), dtype))
    _three([x], case.ours, case.torch, seed, f"{case.label} {dtype} {x.layout}")


@_settings(40)
@given(case=st.sampled_from([c for c in ACTIVATION_CASES if c.name in ("relu", "leaky_relu")]),
       dtype=dtypes, data=st.data())
def test_activations_in_place(case, dtype, data):
    x = data.draw(inputs(data.draw(shapes()), dtype, expand_ok=False))
    ours, theirs = x.view(x.leaf.clone()), x.view(x.leaf.clone())
    ref = x.view(x.leaf.double())
    out = case.ours(ours, inplace=True)
    case.torch(theirs, inplace=True)
    assert out is ours
    _match(ours, theirs, case.torch(ref), f"{case.label} in place")


# --- softmax, log_softmax, logsumexp


# cross_entropy's backward computes p = exp(x - lse) from the row's log-sum-exp, rounded to the
# opmath type, where torch exponentiates its log_softmax, (x - m) - log s: a row whose max m is
# large in magnitude and not alone at the top (log s not negligible) loses the low bits of log s
# in its gradient. Such rows are left out of the cross-entropy test (their forward, computed in
# torch's order, is tested by test_log_softmax_and_cross_entropy_of_large_near_ties); every other
# row is tested. The bound: beyond it half an ulp of m (in opmath) exceeds the tolerance floor.
_NEAR_TIE_BOUND = {torch.float64: 2.0**10, torch.float32: 4.0, torch.float16: 2.0**12,
                   torch.bfloat16: 2.0**12}


def _large_near_ties(x: torch.Tensor, dim: int) -> bool:
    v = x.detach().double()
    if v.dim() == 0 or v.numel() == 0:
        return False
    finite = v.isfinite()
    v = v.where(finite, -math.inf)
    m = v.amax(dim, keepdim=True)
    near = finite & (v >= m - 20)  # within e^-20 of the top: log s is not negligible
    return bool(((near.sum(dim) >= 2) & (m.squeeze(dim).abs() > _NEAR_TIE_BOUND[x.dtype])).any())


@_settings(200)
@given(log=st.booleans(), dtype=dtypes, data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_softmax_and_log_softmax(log, dtype, data, seed):
    shape = data.draw(shapes())
    x = data.draw(inputs(shape, dtype))
    n = max(len(shape), 1)
    dim = data.draw(st.integers(-n, n - 1))
    cast = data.draw(st.sampled_from([None, None, torch.float32, torch.float64]))
    ours_fn = BF.log_softmax if log else BF.softmax
    torch_fn = TF.log_softmax if log else TF.softmax
    _three([x], lambda v: ours_fn(v, dim, dtype=cast), lambda v: torch_fn(v, dim, dtype=cast),
           seed, f"{'log_' if log else ''}softmax dim={dim} dtype={cast} {dtype} {x.layout}",
           fn_ref=lambda v: torch_fn(v, dim))


@_settings(200)
@given(dtype=dtypes, keepdim=st.booleans(), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_logsumexp(dtype, keepdim, data, seed):
    shape = data.draw(shapes())
    x = data.draw(inputs(shape, dtype))
    ndim = len(shape)
    n = max(ndim, 1)
    if data.draw(st.booleans()):
        dim = data.draw(st.integers(-n, n - 1))
        torch_dim = dim
    else:
        chosen = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        dim = tuple(d - n if data.draw(st.booleans()) else d for d in chosen)
        # Empty means every dim for us (torch's own handling of () varies with the shape).
        torch_dim = dim or tuple(range(ndim))
    _three([x], lambda v: BF.logsumexp(v, dim, keepdim),
           lambda v: torch.logsumexp(v, torch_dim, keepdim),
           seed, f"logsumexp dim={dim} keepdim={keepdim} {dtype} {x.layout}")


# --- cross-entropy


@st.composite
def class_targets(draw, shape, n_classes, ignore_index):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(n_classes, shape, generator=g)
    ignored = torch.rand(shape, generator=g) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    return t.masked_fill(ignored, ignore_index)


@_settings(200)
@given(dtype=dtypes, data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_cross_entropy(dtype, data, seed):
    C = data.draw(st.integers(1, 6))
    batch = data.draw(st.sampled_from([(), (0,), (1,), (5,), (3, 2), (2, 0, 3)]))
    shape = batch[:1] + (C,) + batch[1:]
    x = data.draw(inputs(shape, dtype))
    probabilities = data.draw(st.booleans())
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    smoothing = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    weight = None
    if data.draw(st.booleans()):
        positive = st.floats(0.0, 3.0, allow_nan=False)
        w = data.draw(st.lists(st.one_of(positive, st.just(0.0)), min_size=C, max_size=C))
        weight = Input(torch.tensor(w, dtype=dtype), "contiguous", lambda t: t)
    if probabilities:
        ignore_index = -100
        t_seed = data.draw(st.integers(0, 2**31 - 1))
        g = torch.Generator().manual_seed(t_seed)
        t = torch.rand(shape, generator=g, dtype=torch.float64)
        t = (t / t.sum(1 if len(shape) > 1 else 0, keepdim=True)).to(dtype)
        target = Input(t, "contiguous", lambda v: v)
    else:
        ignore_index = data.draw(st.sampled_from([-100, 0, C - 1]))
        t = data.draw(class_targets(batch, C, ignore_index))
        target = Input(t, "contiguous", lambda v: v)
        ignored = (t == ignore_index).unsqueeze(1 if len(shape) > 1 else 0).expand(shape)
        if (~x.view().isfinite() & ignored).any():
            # A deliberate divergence (test_cross_entropy_ignored_rows_get_zero_gradient_...):
            # keep non-finite logits out of this example rather than lose the rest of it.
            x.leaf.nan_to_num_(0.0, 0.0, 0.0)

    hypothesis.assume(not _large_near_ties(x.view(), 1 if len(shape) > 1 else 0))

    def call(fn):
        return lambda v, t_, w: fn(v, t_, weight=w, ignore_index=ignore_index,
                                   reduction=reduction, label_smoothing=smoothing)

    what = (f"cross_entropy {'probs' if probabilities else 'indices'} C={C} batch={batch} "
            f"weight={weight is not None} ignore={ignore_index} smoothing={smoothing} "
            f"{reduction} {dtype} {x.layout}")
    try:  # torch's own kernels may lack a dtype on this device
        call(TF.cross_entropy)(x.view(), target.view(), weight.leaf if weight else None)
    except (RuntimeError, NotImplementedError) as e:
        hypothesis.assume("not implemented" not in str(e))
        raise
    # Gradients w.r.t. the logits only: targets and weights are data.
    lo, lt, lr = _leaves([x]), _leaves([x]), _leaves([x], torch.float64)
    tr = target.leaf.double() if probabilities else target.leaf
    wr = weight.leaf.double() if weight else None
    w = weight.leaf if weight else None
    guard = Unchanged(target=target.leaf, weight=w)
    _run_three((lo, lambda ls: call(BF.cross_entropy)(x.view(ls[0]), target.leaf, w)),
               (lt, lambda ls: call(TF.cross_entropy)(x.view(ls[0]), target.leaf, w)),
               (lr, lambda ls: call(TF.cross_entropy)(x.view(ls[0]), tr, wr)),
               seed, what)
    guard.check(what)


# --- linear (+ activation)


@_settings(150)
@given(case=st.sampled_from(LINEAR_CASES), dtype=dtypes, bias=st.booleans(), data=st.data(),
       seed=st.integers(0, 2**31 - 1))
def test_linear(case, dtype, bias, data, seed):
    batch = data.draw(shapes(0, 2, 5))
    K, N = data.draw(st.integers(0, 9)), data.draw(st.integers(0, 9))
    # Finite values capped at 1e3 (inf and NaN kept): a product of two huge values is beyond
    # every dtype on all three sides alike, which says nothing.
    def moderate(s):
        return values(s, dtype).map(lambda t: t.where(~t.isfinite(), t.clamp(-1e3, 1e3)))
    x = data.draw(inputs(batch + (K,), dtype, value_strategy=moderate))
    w = data.draw(inputs((N, K), dtype, value_strategy=moderate))
    b = data.draw(inputs((N,), dtype, value_strategy=moderate)) if bias else None
    _three([x, w, b], lambda x_, w_, b_: case.ours(x_, w_, b_),
           lambda x_, w_, b_: case.torch(x_, w_, b_),
           seed, f"{case.label} bias={bias} batch={batch} K={K} N={N} {dtype} "
                 f"{x.layout}/{w.layout}")


# --- gradient clipping


def _exact_norm(tensors, p):
    """||tensors||_p in float64 without overflow or underflow (max times the scaled sum)."""
    a = torch.cat([t.detach().double().flatten() for t in tensors] or [torch.zeros(0)]).abs()
    if a.isnan().any():
        return math.nan
    m = a.max().item() if a.numel() else 0.0
    if math.isinf(p) or m == 0 or math.isinf(m):
        return m
    return m * math.fsum((a / m).pow(p).tolist()) ** (1 / p)


@st.composite
def gradient_sets(draw):
    """1-4 gradients of drawn shapes, dtypes and (writable) layouts."""
    n = draw(st.integers(1, 4))
    mixed = draw(st.booleans())
    first = draw(dtypes)
    grads = []
    for _ in range(n):
        dtype = draw(dtypes) if mixed else first
        grads.append(draw(inputs(draw(shapes(0, 3, 9)), dtype, expand_ok=False)))
    return grads


class Params(list):
    """Parameters whose .grad are the gradients' views, each on a fresh copy of its storage;
    check_storage() asserts that the in-place ops wrote nothing outside those views."""

    def __init__(self, grads):
        super().__init__()
        self.grads, self.leaves = grads, []
        for g in grads:
            leaf, view = g.fresh()
            p = torch.nn.Parameter(torch.zeros(view.shape, dtype=view.dtype))
            p.grad = view
            self.append(p)
            self.leaves.append(leaf)
        self.before = [_bits(leaf) for leaf in self.leaves]
        self.data_guard = Unchanged(**{f"param{i}": p for i, p in enumerate(self)})

    def check_storage(self, what):
        self.data_guard.check(what)
        for i, (g, leaf, before) in enumerate(zip(self.grads, self.leaves, self.before)):
            expected = before.clone()
            g.view(expected).copy_(g.view(_bits(leaf)))  # the view's new bits, the rest as was
            assert torch.equal(_bits(leaf), expected), f"{what} wrote outside grad {i}"


NORM_ORDERS = st.sampled_from([2.0, 1.0, math.inf, 0.5, 3.0])


@_settings(250)
@given(grads=gradient_sets(), p=NORM_ORDERS, max_norm=st.sampled_from([0.0, 1e-3, 1.0, 1e3]))
def test_clip_grad_norm_and_total_norm(grads, p, max_norm):
    tensors = [g.view() for g in grads]
    guard = Unchanged(**{f"tensor{i}": g.leaf for i, g in enumerate(grads)})
    total = BU.get_total_norm(tensors, p)
    guard.check("get_total_norm")
    exact = torch.tensor(_exact_norm(tensors, p), dtype=torch.float64)
    try:
        theirs = torch.nn.utils.get_total_norm(tensors, p)
    except RuntimeError:  # the inf norm of an empty tensor: documented, ours counts no elements
        assert math.isinf(p) and any(t.numel() == 0 for t in tensors)
        theirs = exact.to(total.dtype)
    # A float64 norm of float64 and narrower tensors is as accurate as float32: the narrower
    # ones are summed in float32 (torch rounds their norms to their own dtypes).
    precision = (torch.float32 if total.dtype == torch.float64
                 and any(t.dtype != torch.float64 for t in tensors) else None)
    _match(total, theirs, exact, f"get_total_norm p={p}", precision)

    ours_p, theirs_p = Params(grads), Params(grads)
    total = BU.clip_grad_norm_(ours_p, max_norm, p)
    ours_p.check_storage("clip_grad_norm_")
    try:
        theirs_total = torch.nn.utils.clip_grad_norm_(theirs_p, max_norm, p)
    except RuntimeError:
        theirs_total = exact.to(total.dtype)
        theirs_p = None
    _match(total, theirs_total, exact, f"clip_grad_norm_ p={p} total", precision)
    # The reference clips with the exact norm, as torch does: clamp(max_norm / (norm + 1e-6), 1).
    coef = torch.clamp(max_norm / (exact + 1e-6), max=1.0)
    for i, (q, g) in enumerate(zip(ours_p, grads)):
        ref = g.view(g.leaf.double()) * coef
        _match(q.grad, theirs_p[i].grad if theirs_p else ref.to(q.grad.dtype), ref,
               f"clip_grad_norm_ p={p} max_norm={max_norm} grad {i} {g.layout}",
               precision if q.grad.dtype == torch.float64 else None)


@_settings(150)
@given(grads=gradient_sets(), clip=st.sampled_from([0.0, 1e-3, 0.5, 1e3]),
       total=st.sampled_from([0.0, 0.5, 7.0, math.inf, math.nan]),
       total_dtype=st.sampled_from([torch.float32, torch.float64]))
def test_clip_grad_value_and_clip_grads_with_norm(grads, clip, total, total_dtype):
    ours_p, theirs_p = Params(grads), Params(grads)
    BU.clip_grad_value_(ours_p, clip)
    ours_p.check_storage("clip_grad_value_")
    torch.nn.utils.clip_grad_value_(theirs_p, clip)
    for i, (q, t, g) in enumerate(zip(ours_p, theirs_p, grads)):
        ref = g.view(g.leaf.double()).clamp(-clip, clip)
        _match(q.grad, t.grad, ref, f"clip_grad_value_ {clip} grad {i} {g.layout}")

    ours_p, theirs_p = Params(grads), Params(grads)
    norm = torch.tensor(total, dtype=total_dtype)
    norm_guard = Unchanged(total_norm=norm)
    BU.clip_grads_with_norm_(ours_p, 1.5, norm)
    norm_guard.check("clip_grads_with_norm_")
    ours_p.check_storage("clip_grads_with_norm_")
    torch.nn.utils.clip_grads_with_norm_(theirs_p, 1.5, norm)
    coef = torch.clamp(1.5 / (norm.double() + 1e-6), max=1.0)
    for i, (q, t, g) in enumerate(zip(ours_p, theirs_p, grads)):
        _match(q.grad, t.grad, g.view(g.leaf.double()) * coef,
               f"clip_grads_with_norm_ {total} grad {i} {g.layout}")


# --- what the tests above found, kept as tests of their own


def test_log_softmax_and_cross_entropy_of_large_near_ties():
    for v in (1e3, 1e8):
        x = torch.tensor([[v, v, v - 1.0]])
        t = torch.tensor([0])
        ref = x.double()
        _match(BF.log_softmax(x, 1), TF.log_softmax(x, 1), TF.log_softmax(ref, 1), "log_softmax")
        _match(BF.cross_entropy(x, t), TF.cross_entropy(x, t), TF.cross_entropy(ref, t),
               "cross_entropy")


def test_cross_entropy_ignored_rows_get_zero_gradient_whatever_their_logits():
    # A deliberate divergence (README): an ignored row's gradient is 0, never read from its
    # logits. torch's log_softmax backward makes it NaN where the row's log-probabilities are NaN
    # (a NaN or +inf logit, or every logit -inf), which would poison an optimizer step over a
    # padding row. The other rows match torch.
    for row in ([math.nan, 0.0], [math.inf, 0.0], [-math.inf, -math.inf]):
        x = torch.tensor([row, [1.0, 2.0]], requires_grad=True)
        xt = x.detach().clone().requires_grad_()
        t = torch.tensor([-100, 1])
        loss, loss_t = BF.cross_entropy(x, t), TF.cross_entropy(xt, t)
        torch.testing.assert_close(loss, loss_t)
        (g,) = torch.autograd.grad(loss, x)
        (gt,) = torch.autograd.grad(loss_t, xt)
        assert torch.equal(g[0], torch.zeros(2)), row
        torch.testing.assert_close(g[1], gt[1])
