"""Every autograd Function of the package keeps the tensors its backward and jvp need only through
saved-tensor hooks (ops/autograd.py: save_for_forward only inside a dual level), so that
activation checkpointing and save_on_cpu can free or move them. The Functions are found by
walking the package, so a new Function fails here until it has a case below."""

import gc
import importlib
import inspect
import pkgutil
import weakref

import pytest
import torch

import backprop_ext
import backprop_ext.functional as BF


def _functions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(backprop_ext.__path__, "backprop_ext."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, torch.autograd.Function) and obj.__module__ == info.name
                    and obj.__module__.startswith("backprop_ext.")):
                found[obj.__name__] = obj
    return found


FUNCTIONS = _functions()


def _t(*shape, dtype=torch.float64):
    """A non-leaf tensor that requires grad: the graph holds its leaf, not it."""
    return torch.randn(*shape, dtype=dtype).requires_grad_().clone()


def _target(n, c):
    return torch.randint(0, c, (n,))


# name -> a call of the Function (through its public function where the Function's arguments
# are the public function's decisions), returning (tensors it was given, its outputs).
def _apply(cls, *args):
    out = cls.apply(*args)
    return args, out


CASES = {
    "ActivationFunction": lambda F: _apply(F, _t(3, 4), "gelu", 0.0, 0.0),
    "ActivationBackwardFunction": lambda F: _apply(F, _t(3, 4), _t(3, 4), "tanh", 0.0, 0.0),
    "GatedFunction": lambda F: _apply(F, _t(3, 4), _t(3, 4), "silu", 0.0, 0.0),
    "GatedBackwardFunction": lambda F: _apply(F, _t(3, 4), _t(3, 4), _t(3, 4), "silu", 0.0, 0.0),
    "LinearFunction": lambda F: _apply(F, _t(3, 4), _t(5, 4), _t(5), "gelu", 0.0, 0.0, True),
    "LinearBackwardFunction": lambda F: _apply(F, _t(3, 5), _t(3, 4), _t(5, 4), _t(3, 5),
                                               "gelu", 0.0, 0.0, [True, True, True]),
    "LinearPreactBackwardFunction": lambda F: _apply(F, _t(3, 5), _t(3, 5), "gelu", 0.0, 0.0,
                                                     True),
    "SoftmaxFunction": lambda F: _apply(F, _t(3, 4), -1, False),
    "SoftmaxBackwardFunction": lambda F: _apply(F, _t(3, 4), _t(3, 4).softmax(-1), -1, False),
    "LogsumexpFunction": lambda F: _apply(F, _t(3, 4), 1),
    "LogsumexpBackwardFunction": lambda F: _apply(F, _t(3, 1), _t(3, 4), _t(3, 1), 1),
    "CrossEntropyFunction": lambda F: _apply(F, _t(3, 4), _target(3, 4), None, -100, True),
    "CrossEntropyLossFunction": lambda F: _apply(F, _t(3, 4), _target(3, 4), None, -100, 0.1,
                                                 "mean"),
    "CrossEntropyBackwardFunction": lambda F: _apply(
        F, _t(3, 4), _target(3, 4), None, torch.rand(3, dtype=torch.float64), _t(3), _t(3), -100),
    # Its `precompute` argument is the public function's choice.
    "LinearCrossEntropyFunction": lambda F: (
        (x := _t(6, 4), w := _t(5, 4), b := _t(5)),
        BF.linear_cross_entropy(x, w, _target(6, 5), linear_bias=b)),
}


def test_every_function_has_a_case():
    assert set(FUNCTIONS) == set(CASES), "add a case for each new autograd Function"


def _flat(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _flat(o)


@pytest.mark.parametrize("name", sorted(CASES))
def test_saved_tensors_go_through_the_hooks(name):
    """Under hooks that hold the saved tensors, dropping the hooks' references and the caller's
    must free every tensor the call was given or made: none is held by the graph node."""
    store = {}

    def pack(t):
        store[len(store)] = t
        return len(store) - 1

    with torch.autograd.graph.saved_tensors_hooks(pack, store.__getitem__):
        args, out = CASES[name](FUNCTIONS[name])
    nodes = [o.grad_fn for o in _flat(out) if o.grad_fn is not None]
    ours = [n for n in nodes if type(n).__name__.startswith(name)]
    assert ours, f"{name}: the call recorded no node of its own: {[type(n) for n in nodes]}"
    for node in ours:  # what setup_context put on ctx besides saved tensors
        held = [k for k, v in vars(node).items() if any(True for _ in _flat(v))]
        assert not held, f"{name}: ctx.{held} hold tensors outside the saved-tensor hooks"
        assert node.saved_for_forward is None
    tensors = [t for t in (*_flat(args), *_flat(out)) if not t.is_leaf or not t.requires_grad]
    refs = [weakref.ref(t) for t in tensors]
    del args, out, tensors
    store.clear()
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, (f"{name}: {len(alive)} tensor(s) of shape "
                       f"{[tuple(t.shape) for t in alive]} outlive the hooks; held by the graph")
    del nodes, ours


@pytest.mark.parametrize("name", sorted(CASES))
def test_jvp_tensors_go_through_save_for_forward(name):
    """ctx.save_for_forward is called through ops.autograd.save_for_forward (inside a dual level
    only), never directly: outside one it would hold its tensors past the hooks."""
    source = inspect.getsource(FUNCTIONS[name])
    assert "ctx.save_for_forward(" not in source, (
        f"{name}: call save_for_forward(ctx, ...) from backprop_ext.ops.autograd")
