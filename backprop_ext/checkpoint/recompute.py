"""Rebuilding cheap activations in backward instead of keeping them: the "selective" recompute.

    with rebuild_scope():
        y = model(x)          # autograd keeps less; backward rebuilds the rest

In a Linear -> activation stack autograd keeps two tensors per layer that determine each other:
the activation saves its input z (the GEMM output; gelu, silu, softplus, ... differentiate
through it) and the next Linear saves the activation's output y = act(z) for its weight gradient.
Inside a rebuild scope

* a dispatch mode (_Recorder) notes each output of a RECIPES op with the one tensor it was
  computed from and how ("y = gelu(z, approximate='tanh')");
* saved-tensors hooks keep every tensor autograd saves, as autograd would, except a noted output
  whose source is itself kept (saved in the same scope and unchanged since): that one is stored
  as (kept source, recipe) and rebuilt when backward unpacks it.

So each layer keeps its GEMM output only, and backward recomputes each activation once from it,
re-running no matrix product. The rebuilt tensor is bit for bit the one autograd would have kept:
the same op on the same input (for the fused Linear's output, see _fused_rebuild_is_exact).
Autograd attaches the saved tensor's grad_fn to whatever unpack returns, so double backward
differentiates through rebuilt tensors as through kept ones, and a retained graph can be
backwarded any number of times.

Composition. Kept tensors are passed on to the saved-tensors hooks that were active when the
scope was entered (torch.utils.checkpoint's, save_on_cpu, a memory meter), so a scope inside a
full checkpoint keeps nothing itself and, during the checkpoint's recomputation, makes it keep
one tensor per layer instead of two. A rebuild links only tensors kept under the same outer
hooks: one checkpoint frame never reaches into another's.

Versions. Autograd does not check saved tensors' versions once hooks are installed, so the hooks
do: a kept tensor modified in place after it was saved raises in backward, as it would without
the scope; an output modified in place before it was saved is kept, not rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["rebuild_scope", "RECIPES", "Observation"]

aten = torch.ops.aten
_ops = torch.ops.backprop_ext


# --- what can be rebuilt: elementwise ops of one tensor, whose backward keeps that tensor


def _overloads(*names: str) -> frozenset:
    return frozenset(getattr(aten, n).default for n in names if hasattr(aten, n))


# torch.nn's activations whose backward reads the input. (Those whose backward reads the output,
# relu, relu6, sigmoid and tanh, already keep one tensor per layer: nothing to gain.) Our
# activation op, and the fused Linear's output, rebuilt from the pre-activation it keeps.
RECIPES = _overloads("gelu", "silu", "mish", "softplus", "leaky_relu", "hardswish", "elu") | {
    _ops.activation_fwd.default, _ops.linear_fwd.default}


def _meta(t: torch.Tensor) -> tuple:
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device)


class _Product:
    """An output of a RECIPES op: how to rebuild it, and from what."""

    __slots__ = (
        "__weakref__",
        "meta",
        "recipe",
        "scope",
        "shared",
        "source",
        "source_meta",
        "source_version",
        "version",
    )

    def __init__(self, recipe, out: torch.Tensor, source: torch.Tensor, scope):
        self.recipe = recipe
        self.scope = scope  # the scope it was computed in: its source must be kept in the same
        self.meta = _meta(out)
        self.version = out._version
        self.source_meta = _meta(source)
        self.source_version = source._version
        self.source = None  # weakref to the _Kept of the source, once it is kept
        self.shared = None  # weakref to the _Rebuilt handed out for it, shared between savers


# Keyed by storage (a storage's Python object lives exactly as long as the storage), so entries
# vanish with the tensors they describe and a reused address is never mistaken for a known one.
_products: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # output storage -> _Product
_pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # source storage -> [_Product]
_kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # storage -> [weakref(_Kept)]


# --- saved values: what the hooks hand to autograd


class _Saved:
    """A value handed to `consumers` saved variables; produced once per backward pass (graph task),
    shared between them, released after the last one took it."""

    __slots__ = ("__weakref__", "_left", "_task", "_value", "consumers")

    def __init__(self):
        self.consumers = 0
        self._task = None
        self._value = None
        self._left = 0

    def dependency(self) -> _Saved | None:
        return None

    def _produce(self) -> torch.Tensor:
        raise NotImplementedError

    def unpack(self) -> torch.Tensor:
        task = torch._C._current_graph_task_id()
        if task == -1:  # outside backward (e.g. grad_fn._saved_self): nothing to share
            return self._produce()
        if self._task != task:
            self._value, self._task, self._left = self._produce(), task, self.consumers
        value = self._value
        self._left -= 1
        if self._left <= 0:
            self._value, self._task = None, None
        return value


def _retain(saved: _Saved) -> _Saved:
    """One more consumer of `saved` (and, on its first, of what it is produced from)."""
    saved.consumers += 1
    if saved.consumers == 1 and saved.dependency() is not None:
        _retain(saved.dependency())
    return saved


class _Kept(_Saved):
    """A tensor kept for backward: itself, or what the outer hooks made of it."""

    __slots__ = ("meta", "outer_unpack", "packed", "record", "scope", "version")

    def __init__(self, t: torch.Tensor, outer, scope):
        super().__init__()
        self.packed = t if outer is None else outer[0](t)
        self.outer_unpack = None if outer is None else outer[1]
        self.scope = scope
        self.meta = _meta(t)
        self.version = t._version
        self.record = None  # its Observation record, when observed

    def _produce(self) -> torch.Tensor:
        if self.outer_unpack is not None:
            return self.outer_unpack(self.packed)
        t = self.packed
        if t._version != self.version:
            raise RuntimeError(
                "backprop_ext checkpoint: one of the tensors saved for backward has been modified "
                f"by an inplace operation: a tensor of shape {list(t.shape)} is at version "
                f"{t._version}; expected version {self.version} instead (autograd raises the "
                "same error without checkpointing)")
        return t


class _Rebuilt(_Saved):
    """An activation output, stored as the kept tensor it was computed from and the recipe."""

    __slots__ = ("meta", "recipe", "source")

    def __init__(self, source: _Kept, product: _Product):
        super().__init__()
        self.source = source
        self.recipe = product.recipe
        self.meta = product.meta

    def dependency(self) -> _Saved:
        return self.source

    def _produce(self) -> torch.Tensor:
        return self.rebuild(self.source.unpack())

    def rebuild(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), _autocast_off(z.device.type):
            y = self.recipe(z)
        size, stride, _, dtype, _ = self.meta
        if y.stride() != stride or y.dtype != dtype:  # laid out otherwise than the first time
            y = torch.empty_strided(size, stride, dtype=dtype, device=y.device).copy_(y)
        return y


class _View(_Saved):
    """A saved view of a rebuilt tensor (e.g. a Linear's input flattened to 2-D)."""

    __slots__ = ("base", "view")

    def __init__(self, base: _Rebuilt, t: torch.Tensor):
        super().__init__()
        self.base = base
        self.view = (tuple(t.shape), t.stride(), t.storage_offset())

    def dependency(self) -> _Saved:
        return self.base

    def _produce(self) -> torch.Tensor:
        return self.base.unpack().as_strided(*self.view)


def _autocast_off(device_type: str):
    # Recipes replay ops below autocast, on tensors already in the dtype they ran in.
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


# --- measuring what a scope keeps and rebuilds


@dataclasses.dataclass(eq=False)
class SavedRecord:
    """One storage saved for backward during an observed forward."""

    nbytes: int
    producer: Any  # tag current when an op created the storage; None: it existed before
    savers: list  # tags current when it was saved, in order
    source: SavedRecord | None = None  # for an output the scope would rebuild: its kept source
    rebuilt: _Rebuilt | None = None  # the recipe, for timing; dropped by the caller


class Observation:
    """Filled by rebuild_scope(observe=...): every storage saved for backward, what the scope
    would rebuild and what it would keep. `tag` is the caller's label for the code running now
    (e.g. the index of the module); records carry the tags of their creation and saves."""

    def __init__(self):
        self.tag: Any = None
        self.records: list[SavedRecord] = []
        self._by_storage: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._created: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def created(self, out, args, kwargs) -> None:
        """Tags the storages of an op's outputs that are new: not an input's (views, in-place)."""
        inputs = [t.untyped_storage() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and not t.is_meta]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                if not any(storage is s for s in inputs):
                    self._created.setdefault(storage, self.tag)

    def producer(self, t: torch.Tensor) -> Any:
        """The tag current when t's storage was created; None if it existed before."""
        return self._created.get(t.untyped_storage())

    def saved(self, storage, kept: _Kept | None, rebuilt: _Rebuilt | None) -> None:
        record = self._by_storage.get(storage)
        if record is None:
            record = SavedRecord(storage.nbytes(), self._created.get(storage), [])
            self._by_storage[storage] = record
            self.records.append(record)
        record.savers.append(self.tag)
        if rebuilt is not None and record.source is None:
            record.source, record.rebuilt = rebuilt.source.record, rebuilt
        if kept is not None and kept.record is None:
            kept.record = record


# --- the hooks


def _pack(t: torch.Tensor, outer, scope, observe: Observation | None):
    storage = t.untyped_storage()
    product = _products.get(storage)
    if product is not None and t._version == product.version and t.dtype == product.meta[3]:
        source = product.source() if product.source is not None else None
        if source is not None and source.scope is scope:
            rebuilt = product.shared() if product.shared is not None else None
            if rebuilt is None or rebuilt.source is not source:
                rebuilt = _Rebuilt(source, product)
                product.shared = weakref.ref(rebuilt)
            if observe is None:
                return _retain(rebuilt if _meta(t) == product.meta else _View(rebuilt, t))
            observe.saved(storage, None, rebuilt)  # and keep it, as autograd would
            observe = None
    meta = _meta(t)
    refs = _kept.get(storage)
    for ref in refs or ():
        kept = ref()
        if (kept is not None and kept.scope is scope and kept.meta == meta
                and kept.version == t._version):
            break
    else:
        kept = _Kept(t, outer, scope)
        if refs is None:
            _kept[storage] = refs = []
        refs.append(weakref.ref(kept))
        waiting = [p for p in _pending.pop(storage, ()) if not _link(p, kept)]
        if waiting:  # computed in another scope: they wait for a kept source in theirs
            _pending[storage] = waiting
    if observe is not None:
        observe.saved(storage, kept, None)
    return _retain(kept)


def _link(product: _Product, kept: _Kept) -> bool:
    """Makes `kept` the source of `product` if it is the tensor the product was computed from."""
    # Only within one scope: during a checkpoint's recomputation the tensors it re-creates must
    # serve each other, not the originals (still alive in the graph) that they stand in for.
    if (kept.scope is product.scope and product.source_meta == kept.meta
            and product.source_version == kept.version):
        product.source = weakref.ref(kept)
        return True
    return False


def _unpack(saved):
    return saved.unpack() if isinstance(saved, _Saved) else saved


class _Hooks(torch.autograd.graph.saved_tensors_hooks):
    def __init__(self, outer, observe: Observation | None):
        # Tensors kept under the same outer hooks can serve each other; without outer hooks every
        # scope is one (consecutive checkpointed blocks link across their boundaries).
        scope = None if outer is None else outer[0]

        def pack(t):
            return _pack(t, outer, scope, observe)

        pack._backprop_ext_scope = scope  # see rebuild_scope and _note
        super().__init__(pack, _unpack)


# --- the recorder

_FOREIGN = object()  # the scope of ops run under saved-tensors hooks that are not a rebuild scope's


class _Recorder(TorchDispatchMode):
    """Notes how each RECIPES output can be rebuilt; every other op passes straight through."""

    def __init__(self, observe: Observation | None):
        super().__init__()
        self.observe = observe

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.observe is not None:
            self.observe.created(out, args, kwargs)
        if func in RECIPES:
            _note(func, args, kwargs, out)
        return out


def _note(func, args, kwargs, out) -> None:
    if func is _ops.linear_fwd.default:
        y, z = out
        activation, p0, p1 = args[3], float(args[4]), float(args[5])
        # The fused layer keeps its pre-activation (bias included) when backward reads it.
        if activation == "none" or z.shape != y.shape or not _fused_rebuild_is_exact(
                activation, p0, p1, z):
            return
        recipe = functools.partial(_ops.activation_fwd.default, activation=activation, p0=p0,
                                   p1=p1)
    else:
        y, z = out, args[0]
        if not isinstance(z, torch.Tensor) or any(
                isinstance(a, torch.Tensor) for a in (*args[1:], *kwargs.values())):
            return
        recipe = functools.partial(_call, func, args[1:], kwargs)
    if not isinstance(y, torch.Tensor) or y.storage_offset() != 0 or y.is_meta:
        return
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    scope = getattr(top[0], "_backprop_ext_scope", _FOREIGN) if top is not None else _FOREIGN
    product = _Product(recipe, y, z, scope)
    _products[y.untyped_storage()] = product
    source = z.untyped_storage()
    for ref in _kept.get(source, ()):  # the source was saved before the op ran
        kept = ref()
        if kept is not None and _link(product, kept):
            return
    _pending.setdefault(source, []).append(product)


def _call(func, rest, kwargs, z):
    return func(z, *rest, **kwargs)


# --- the fused Linear: is activation_fwd(pre-activation) its output, bit for bit?

_fused_exact: dict = {}


def _fused_rebuild_is_exact(activation: str, p0: float, p1: float, z: torch.Tensor) -> bool:
    # Probed once per shape, dtype, device and thread count (on CUDA that first time syncs with
    # the host, as the probe compares results).
    key = (activation, p0, p1, z.dtype, z.device, tuple(z.shape), torch.get_num_threads())
    exact = _fused_exact.get(key)
    if exact is None:
        exact = _fused_exact[key] = _probe_fused(activation, p0, p1, z)
    return exact


def _probe_fused(activation: str, p0: float, p1: float, z: torch.Tensor) -> bool:
    """Whether activation_fwd(z) rebuilds the fused Linear's output bit for bit at z's shape.

    The CPU kernels run whole vectors through the vector math and the leftovers through the
    scalar math, which may round differently; the fused layer's leftovers are each row's last
    columns, activation_fwd's the end of each thread's share of the flattened tensor. So: find a
    value the two maths disagree on, and run both kernels on a tensor full of it (the fused one
    through a product with K = 1, which is exact): any element they compute differently shows.
    """
    value = _distinguishing_value(activation, p0, p1, z.dtype, z.device)
    if value is None:
        return True  # vector and scalar maths agree: the layout cannot matter
    n = z.shape[-1]
    m = z.numel() // n if n else 0
    ones = torch.ones(m, 1, dtype=z.dtype, device=z.device)
    weight = torch.full((n, 1), value, dtype=z.dtype, device=z.device)
    out, preact = _ops.linear_fwd(ones, weight, None, activation, p0, p1, True)
    return torch.equal(out, _ops.activation_fwd(preact, activation, p0, p1))


@functools.cache
def _distinguishing_value(activation, p0, p1, dtype, device):
    # 64 elements fill whole vectors at any vector width up to 64; the 65th is a scalar leftover.
    for v in torch.linspace(-6, 6, 241, dtype=torch.float64).tolist():
        t = torch.full((65,), v, dtype=dtype, device=device)
        y = _ops.activation_fwd(t, activation, p0, p1)
        if not torch.equal(y[:1], y[64:]):
            return float(t[0])
    return None


# --- the scope


_state = threading.local()


@contextlib.contextmanager
def rebuild_scope(observe: Observation | None = None):
    """Inside: a tensor saved for backward that an activation computed from a kept tensor is
    stored as that tensor and the recipe, and rebuilt in backward (see the module docstring).
    Scopes nest as one.

    observe: measure instead of saving memory: keep every tensor (autograd's own behaviour) and
    record in `observe` what would have been kept and what rebuilt.
    """
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    nested = top is not None and hasattr(top[0], "_backprop_ext_scope")
    with contextlib.ExitStack() as stack:
        if not nested:
            stack.enter_context(_Hooks(top, observe))
        if not getattr(_state, "recording", False):
            _state.recording = True
            stack.callback(setattr, _state, "recording", False)
            stack.enter_context(_Recorder(observe))
        yield
