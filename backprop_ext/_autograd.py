"""Rules shared by every family's autograd Functions.

Dynamo cannot trace an autograd.Function that defines jvp, so each Function that has one gets a
twin without it; under torch.compile the twin runs (forward-mode AD is then unavailable inside
compiled regions; eager forward-mode AD is unaffected). `pick(twin)` chooses.

What jvp reads is saved with save_for_forward(ctx, ...) below, not ctx.save_for_forward directly.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD


def twin(cls: type) -> tuple[type, type]:
    """(cls, the same Function without jvp)."""
    no_jvp = type(f"{cls.__name__}NoJvp", (cls,), {"jvp": torch.autograd.Function.jvp,
                                                    "__module__": cls.__module__})
    return cls, no_jvp


def pick(pair: tuple[type, type]) -> type:
    return pair[1] if torch.compiler.is_compiling() else pair[0]


def save_for_forward(ctx, *tensors) -> None:
    """ctx.save_for_forward(*tensors), when forward-mode AD may call the Function's jvp: inside a
    dual level (torch.func.jvp opens one too).

    ctx.save_for_forward holds its tensors for as long as the graph node lives, past any
    saved-tensors hooks: done on every call, it kept each layer's activations alive through
    activation checkpointing (which works through those hooks) and save_on_cpu.
    """
    if fwAD._current_level >= 0:
        ctx.save_for_forward(*tensors)
