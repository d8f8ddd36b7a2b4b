"""The ops' C++ graph nodes (csrc/python/eager_autograd.h), which a plain-eager call recording a
gradient takes, against the ops' Python autograd rules, which every other call takes (forward
mode, functorch, modes, compile): the same outputs and gradients to the bit, first and second
order, through the entry points and through torch.ops; their saved tensors go through
saved-tensor hooks and are checked for in-place changes, as torch's own nodes' are."""

import gc
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from backprop_ext import _C
from backprop_ext.testing import op_samples

NODE_OPS = ("activation_fwd", "gated_fwd", "softmax_fwd", "logsumexp_fwd",
            "cross_entropy_loss_fwd")
SAMPLES = [s for s in op_samples("cpu", torch.float64) if s[1].name().split("::")[1] in NODE_OPS]


def _ids(samples):
    return [label for label, _, _ in samples]


class _Passthrough(TorchDispatchMode):
    """A dispatch mode that changes nothing but the route: under it a call is not plain eager,
    so the op's Autograd kernel runs its Python rule."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _name(op):
    return op.name().split("::")[1]


def _outputs(out):
    return [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]


def _grads(call, args):
    """The call's differentiable outputs, and the first- and second-order gradients of a fixed
    random projection of them with respect to the floating-point arguments."""
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    outs = _outputs(call(*args))
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    first = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
    used = [(i, d) for i, d in zip(inputs, first) if d is not None and d.requires_grad]
    second = torch.autograd.grad(sum((d * d).sum() for _, d in used), [i for i, _ in used],
                                 allow_unused=True) if used else ()
    return outs, first, second, outs[0].grad_fn


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("route", ["entry", "torch.ops"])
@pytest.mark.parametrize("sample", SAMPLES, ids=_ids(SAMPLES))
def test_node_equals_rule(sample, route):
    _, op, args = sample
    call = getattr(_C, _name(op)) if route == "entry" else op
    outs, first, second, node = _grads(call, args)
    assert type(node).__name__ == "CppFunction" and node.name().startswith("backprop_ext::"), (
        f"the plain-eager call did not record the op's C++ node: {node}")
    with _Passthrough():
        r_outs, r_first, r_second, r_node = _grads(op, args)
    assert type(r_node).__name__ != "CppFunction", r_node  # the rule's Python node
    _same(outs, r_outs)
    _same(first, r_first)
    _same(second, r_second)


@pytest.mark.parametrize("sample", SAMPLES, ids=_ids(SAMPLES))
def test_node_saved_tensors_go_through_the_hooks(sample):
    """Under hooks holding the saved tensors, dropping the hooks' references and the caller's
    frees every tensor the call was given or made: the node holds none itself."""
    _, op, args = sample
    # Copies that only this test holds (non-leaves where they require grad: the graph holds
    # their leaves, not them).
    args = tuple(a.detach().clone().requires_grad_(a.requires_grad).clone()
                 if isinstance(a, torch.Tensor) else a for a in args)
    store = {}

    def pack(t):
        store[len(store)] = t
        return len(store) - 1

    with torch.autograd.graph.saved_tensors_hooks(pack, store.__getitem__):
        out = getattr(_C, _name(op))(*args)
    outs = list(out) if isinstance(out, tuple) else [out]
    assert store, "nothing was saved through the hooks"
    node = _outputs(out)[0].grad_fn
    tensors = [t for t in (*args, *outs) if isinstance(t, torch.Tensor)
               and (not t.is_leaf or not t.requires_grad)]
    refs = [weakref.ref(t) for t in tensors]
    del args, out, outs, tensors
    store.clear()
    gc.collect()
    alive = [r() for r in refs if r() is not None]
    assert not alive, f"{len(alive)} tensor(s) outlive the hooks, held by {node.name()}"


def test_node_detects_an_inplace_change_of_a_saved_tensor():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = _C.softmax_fwd(x, 1, False)  # saves y
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_node_frees_its_saved_tensors_after_backward():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = _C.activation_fwd(x, "gelu", 0.0, 0.0)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.sum().backward()
    z = _C.activation_fwd(x, "gelu", 0.0, 0.0)
    z.sum().backward(retain_graph=True)
    z.sum().backward()  # retained: runs again
