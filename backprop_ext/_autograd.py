"""One rule shared by every family's autograd Functions.

Dynamo cannot trace an autograd.Function that defines jvp, so each Function that has one gets a
twin without it; under torch.compile the twin runs (forward-mode AD is then unavailable inside
compiled regions; eager forward-mode AD is unaffected). `pick(twin)` chooses.
"""

from __future__ import annotations

import torch


def twin(cls: type) -> tuple[type, type]:
    """(cls, the same Function without jvp)."""
    no_jvp = type(f"{cls.__name__}NoJvp", (cls,), {"jvp": torch.autograd.Function.jvp,
                                                    "__module__": cls.__module__})
    return cls, no_jvp


def pick(pair: tuple[type, type]) -> type:
    return pair[1] if torch.compiler.is_compiling() else pair[0]
