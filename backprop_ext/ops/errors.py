"""Bad input, reported the way torch reports it: the exception class torch raises for the same
mistake, and a message naming the public function and the user's argument.

The public functions call the ops' C++ entry points directly, which check every argument while
parsing it; the price of that speed is that their messages name the op and its schema's
arguments (`activation_fwd: expected p0 to be a number`), not what the user called. So a public
function does no checking of its own on the way in: only when the call has failed does it hand
the exception here, with its arguments, and this module raises the error the user should see.
A valid call pays nothing (a `try` costs nothing in CPython 3.11+ until something is raised).

    try:
        return _fast(input, "leaky_relu", negative_slope, 0.0)
    except Exception as error:
        raise_public(error, "leaky_relu", _ARGS, (input, negative_slope, inplace))
        raise

`_ARGS` describes each argument as (public name, kind, the op's name for it or None); the kinds
are those of KINDS. raise_public raises a TypeError, torch's words, for the first argument whose
value is not of its kind; otherwise, for an error an op raised (its message starts with the op's
name), the same exception class with the op's name and argument names replaced by the public
ones; otherwise it returns, and the caller re-raises the error as it was.
"""

from __future__ import annotations

import operator
import re

import torch

# kind -> (the check, the words torch uses for it)


def _is_int(value) -> bool:
    if isinstance(value, bool) or isinstance(value, torch.Tensor):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) or (
        not isinstance(value, (str, torch.Tensor)) and hasattr(value, "__float__"))


def _is_dims(value) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_is_int(v) for v in value)
    return _is_int(value)


KINDS = {
    "Tensor": (lambda v: isinstance(v, torch.Tensor), "Tensor"),
    "Tensor?": (lambda v: v is None or isinstance(v, torch.Tensor), "Tensor or None"),
    "float": (_is_number, "Number"),
    "float?": (lambda v: v is None or _is_number(v), "Number or None"),
    "int": (_is_int, "int"),
    "int?": (lambda v: v is None or _is_int(v), "int or None"),
    "dims": (_is_dims, "int or tuple of ints"),
    "bool": (lambda v: isinstance(v, bool), "bool"),
    "str": (lambda v: isinstance(v, str), "str"),
    "dtype?": (lambda v: v is None or isinstance(v, torch.dtype), "torch.dtype or None"),
    "reduction": (lambda v: v in ("none", "mean", "sum"), "'none', 'mean' or 'sum'"),
    "any": (lambda v: True, "anything"),  # anything goes (torch's `if inplace:`), or checked later
}

# What the ops' messages start with: "<op>: ".
_OP_PREFIX = re.compile(r"^(\w+): ")
# ... and another public function's: "backprop_ext.<function>: ".
_PUBLIC_PREFIX = re.compile(r"^backprop_ext\.(\w+)(?:\(\))?: ")


def check_arguments(function: str, args: tuple, values: tuple) -> None:
    """Raises TypeError for the first of `values` that is not of its kind in `args`."""
    for position, ((name, kind, _), value) in enumerate(zip(args, values), start=1):
        check, words = KINDS[kind]
        if not check(value) and kind == "reduction":  # torch: ValueError, whatever the type
            raise ValueError(f"backprop_ext.{function}(): argument '{name}' (position "
                             f"{position}): {name} must be one of {words}, got {value!r}")
        if not check(value):
            raise TypeError(f"backprop_ext.{function}(): argument '{name}' (position {position}) "
                            f"must be {words}, not {type(value).__name__}")


def raise_public(error: BaseException, function: str, args: tuple, values: tuple) -> None:
    """Raises what the user of backprop_ext.<function> should see for `error`, which the call
    with these argument values raised; returns when `error` is already that."""
    if not isinstance(error, Exception):
        return
    check_arguments(function, args, values)
    message = str(error)
    inner = _PUBLIC_PREFIX.match(message)
    if inner is not None and inner.group(1) != function:  # raised by the function it called
        raise type(error)(f"backprop_ext.{function}: {message[inner.end():]}") from None
    match = _OP_PREFIX.match(message)
    if match is None or not _is_op(match.group(1)):
        return
    renames = {op_name: name for name, _, op_name in args if op_name is not None}
    body = message[match.end():]
    if renames:
        body = re.sub(r"\b(" + "|".join(map(re.escape, renames)) + r")\b",
                      lambda m: renames[m.group(1)], body)
    try:
        public = type(error)(f"backprop_ext.{function}: {body}")
    except Exception:  # an exception class whose constructor takes more than a message
        return
    raise public from None


def _is_op(name: str) -> bool:
    from .entry import OPS
    return name in OPS or name in ("cross_entropy_bwd_out", "linear_cross_entropy")
