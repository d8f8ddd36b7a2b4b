"""How every family's registered ops get their autograd and their vmap: from the family's
documented autograd.Function classes, one set of formulas.

Each Function (ActivationFunction, SoftmaxFunction, LinearFunction, ...) is the documented face
of one op: forward calls the op, and setup_context, backward, jvp and vmap are the op's formulas.
register(op, function) hands them to the op:

- autograd: the op's Autograd kernel (csrc/python/ops.cpp) runs, whenever a call records autograd
  history, a rule built here from the Function: a single-level autograd.Function whose forward
  computes the op below autograd and calls the Function's setup_context, and whose backward and
  jvp are the Function's. So a raw torch.ops.backprop_ext call, a torch.export program and
  AOTAutograd differentiate with the same formulas as the public functions, in reverse and
  forward mode, and to any order (each backward calls the backward op, which has a rule of its
  own).
- vmap: torch.library.register_vmap(op, function.vmap).

Why not torch.library.register_autograd: the Function it generates has no setup_context, which
functorch requires of a Function inside a transform, so vmap(grad(op)), grad(vmap(op)) and jacrev
fail (pytorch/pytorch#168393, open; reproduced on torch 2.11 and 2.14); its kernel is Python for
calls that record nothing as well (several microseconds on every call of an exported or compiled
program); and it has no forward mode. The rule here is a single-level Function, the kind
functorch builds for its own transforms of a Function: at each transform level the kernel runs on
that level's tensors and the rule records there, as torch's own autograd kernels do. Its forward
takes ctx (no setup_context override), which also keeps Function.apply from binding arguments with
inspect.signature on every call (torch 2.11 to 2.14 do for Functions overriding setup_context).

Two rules for every Function, registered or composite (linear_cross_entropy's):
- what jvp reads is saved with save_for_forward(ctx, ...) below, not ctx.save_for_forward
  directly: only inside a dual level, so that no saved tensor outlives checkpointing's hooks;
- a composite Function (one that is not an op's rule) that defines jvp runs under torch.compile
  as its jvp-less twin, since Dynamo cannot trace a Function with jvp: `pick(twin(cls))` chooses.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd.function import _SingleLevelFunction

from .. import _C


def op_rule(op: str, function: type) -> type:
    """The autograd rule of the op `op` (a name in backprop_ext's library): `function`'s formulas
    on a single-level Function whose forward runs the op below autograd."""
    below_autograd = getattr(_C, f"{op}_below_autograd")
    setup_context = function.setup_context

    def forward(ctx, *args):
        output = below_autograd(*args)
        setup_context(ctx, args, output)
        return output

    body = {"forward": staticmethod(forward), "backward": staticmethod(function.backward),
            "__module__": function.__module__,
            "__doc__": f"The autograd rule of backprop_ext::{op}: {function.__name__}'s formulas."}
    if function.jvp is not torch.autograd.Function.jvp:
        body["jvp"] = staticmethod(function.jvp)
    return type(f"{function.__name__}Rule", (_SingleLevelFunction,), body)


def register(op: str, function: type) -> None:
    """Gives the op `op` the autograd and the vmap of the autograd.Function `function`."""
    _C._set_autograd_rule(op, op_rule(op, function).apply)
    torch.library.register_vmap(f"backprop_ext::{op}", function.vmap)


# --- helpers for the Functions' vmap rules


def batch_first(x: torch.Tensor, in_dim: int | None, batch_size: int) -> torch.Tensor:
    """x with the vmapped dimension first; a tensor not vmapped over is expanded to it."""
    if in_dim is None:
        return x.expand(batch_size, *x.shape)
    return x.movedim(in_dim, 0)


def batched_dim(dim: int, logical_ndim: int) -> int:
    """`dim` of a per-sample tensor of `logical_ndim` dims, on its batch (batch first)."""
    return dim % logical_ndim + 1 if logical_ndim else 1


def per_sample(info, in_dims, fn, *args):
    """The fallback where no batching rule fits: fn on each sample in turn, outputs stacked
    (batch first). Costs a call per sample."""
    outs = []
    for b in range(info.batch_size):
        sample = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims)]
        outs.append(fn(*sample, *args[len(in_dims):]))
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
    return torch.stack(outs), 0


# --- rules for every Function


def save_for_forward(ctx, *tensors) -> None:
    """ctx.save_for_forward(*tensors), when forward-mode AD may call the Function's jvp: inside a
    dual level (torch.func.jvp opens one too).

    ctx.save_for_forward holds its tensors for as long as the graph node lives, past any
    saved-tensors hooks: done on every call, it kept each layer's activations alive through
    activation checkpointing (which works through those hooks) and save_on_cpu.
    """
    if fwAD._current_level >= 0:
        ctx.save_for_forward(*tensors)


def saved_tensors_hooked() -> bool:
    """Whether tensors saved now go through saved-tensor hooks (checkpointing, save_on_cpu).
    False while compiling (AOTAutograd decides what is saved)."""
    return (not torch.compiler.is_compiling()
            and torch._C._autograd._top_saved_tensors_default_hooks(False) is not None)


def twin(cls: type) -> tuple[type, type]:
    """(cls, the same Function without jvp), for a composite Function under torch.compile."""
    no_jvp = type(f"{cls.__name__}NoJvp", (cls,), {"jvp": torch.autograd.Function.jvp,
                                                    "__module__": cls.__module__})
    return cls, no_jvp


def pick(pair: tuple[type, type]) -> type:
    return pair[1] if torch.compiler.is_compiling() else pair[0]
