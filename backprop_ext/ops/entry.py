"""backprop_ext's registered ops, called the cheap way.

`_ops.<name>(*args)` is `torch.ops.backprop_ext.<name>.default(*args)`: the same op, the same
result, autograd, functorch, dispatch-mode and tracing behaviour, arguments positional and all
given. In eager mode it goes through the op's entry point in backprop_ext._C (csrc/python/ops.cpp),
which parses the arguments by the op's C++ signature and, when nothing is to be recorded, calls
the op below autograd without leaving C++: what a call to one of torch's own functions costs.
Under torch.compile it is the op itself, which Dynamo puts in the graph.

Ops: every op with an entry point, as backprop_ext._C._entry_points() lists them (the table in
csrc/python/ops.cpp; schemas in csrc/ops/schemas.cpp). tests/test_op_registry.py holds that
table, the fake kernels and the autograd and vmap rules against the schemas.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import _C

# Derived from the extension, not written out: the ops whose entry point csrc/python/ops.cpp
# compiles, in its table's order.
OPS = tuple(_C._entry_points())


def _caller(name: str) -> Callable:
    fast = getattr(_C, name)
    op = getattr(torch.ops.backprop_ext, name).default
    is_compiling = torch.compiler.is_compiling  # constant-folded by Dynamo

    def call(*args):
        if is_compiling():
            return op(*args)
        return fast(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"torch.ops.backprop_ext.{name}.default(*args), through backprop_ext._C.{name}."
    return call


activation_fwd = _caller("activation_fwd")
activation_fwd_ = _caller("activation_fwd_")
activation_bwd = _caller("activation_bwd")
softmax_fwd = _caller("softmax_fwd")
softmax_bwd = _caller("softmax_bwd")
logsumexp_fwd = _caller("logsumexp_fwd")
logsumexp_bwd = _caller("logsumexp_bwd")
cross_entropy_fwd = _caller("cross_entropy_fwd")
cross_entropy_bwd = _caller("cross_entropy_bwd")
cross_entropy_loss_fwd = _caller("cross_entropy_loss_fwd")
cross_entropy = _caller("cross_entropy")
linear_fwd = _caller("linear_fwd")
linear_bwd = _caller("linear_bwd")
linear_preact_bwd = _caller("linear_preact_bwd")
gated_fwd = _caller("gated_fwd")
gated_bwd = _caller("gated_bwd")

__all__ = list(OPS)
