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

import collections.abc
import functools
import inspect
import operator
import re
import types
import typing

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


# Names an op's messages use that are not entry points: softmax_fwd(log=True) speaks as
# log_softmax_fwd (csrc/ops/softmax.cpp), the others are ops without an entry.
_OP_SPEAKERS = ("cross_entropy_bwd_out", "linear_cross_entropy", "log_softmax_fwd")


def _is_op(name: str) -> bool:
    from .entry import OPS
    return name in OPS or name in _OP_SPEAKERS


# --- the front ends that are not ops: Modules' constructors, convert(), utils, checkpoint
#
# These check by the parameters' annotations (evaluated: `int | None`, `torch.Tensor | None`,
# `bool`, a class), so a new argument is checked as soon as it is annotated. A Module's own
# arguments (those its torch.nn base class lacks) are checked on the way in, a cheap isinstance
# each at construction; the arguments of its torch.nn base only when the construction failed
# (torch takes anything truthy for `bias`, and we take what torch takes).

_PUBLIC_NAME = re.compile(r"^backprop_ext\.([\w.]+?)(?:\(\))?: ")


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's too


def _type_check(tp, strict_bool: bool = True):
    """(check, words) for one member of an annotation's union, or None: not checked."""
    if tp is type(None) or tp is None:
        return (lambda v: v is None), "None"
    if tp is bool:
        return (_is_bool, "bool") if strict_bool else None
    if tp is int:
        return _is_int, "int"
    if tp is float:
        return _is_number, "float"
    origin = typing.get_origin(tp)
    if origin is collections.abc.Iterable:  # Iterable[X]: a list's or tuple's items are X's
        item = typing.get_args(tp)
        item = _type_check(item[0], strict_bool) if item else None
        words = f"an iterable of {item[1]}" if item else "an iterable"

        def iterable(v, item=item):
            if not isinstance(v, collections.abc.Iterable) or isinstance(v, (str, bytes)):
                return False
            return item is None or not isinstance(v, (list, tuple)) or all(map(item[0], v))

        return iterable, words
    if origin is not None and isinstance(origin, type):  # list[int], tuple[int, ...]
        tp = origin
    if tp is collections.abc.Callable or origin is collections.abc.Callable:
        return callable, "callable"
    if isinstance(tp, type):
        words = (f"torch.{tp.__name__}" if tp.__module__ == "torch" and tp is not torch.Tensor
                 else "torch.nn.Module" if tp is torch.nn.Module else tp.__name__)
        return (lambda v: isinstance(v, tp)), words
    return None


def _annotation_check(annotation, strict_bool: bool = True):
    """(check, words) for a parameter's evaluated annotation, or None when it is not checked
    here (no annotation, a string that did not evaluate, typing.Any, ...)."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return None
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else (annotation,)
    checks = [_type_check(m, strict_bool) for m in members]
    if any(c is None for c in checks):
        return None
    words = [w for _, w in checks]
    words = " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 2 else words)
    return (lambda v: any(check(v) for check, _ in checks)), words


def _signature(fn) -> inspect.Signature:
    try:
        return inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation naming what its module does not import at run time
        return inspect.signature(fn)


class Checker:
    """The annotation checks of `fn`'s parameters, for messages naming backprop_ext.<where>.

    skip: parameters left to the callee (a torch.nn base class's); lax_bool: parameters whose
    `bool` annotation takes anything truthy, as torch's do."""

    def __init__(self, where: str, fn, skip=(), lax_bool=(), drop_self: bool = False) -> None:
        self.where = where
        self.signature = _signature(fn)
        params = list(self.signature.parameters.values())
        if drop_self:
            self.signature = self.signature.replace(parameters=params[1:])
            params = params[1:]
        self.checks = {}
        for position, p in enumerate(params, start=1):
            if p.name in skip or p.kind is p.VAR_KEYWORD:
                continue
            check = _annotation_check(p.annotation, strict_bool=p.name not in lax_bool)
            if check is not None:
                self.checks[p.name] = (position, p.kind is p.VAR_POSITIONAL, *check)

    def check(self, args: tuple, kwargs: dict) -> None:
        """Raises TypeError, in torch's words, for the first argument not of its annotation."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:  # a missing or unexpected argument
            raise TypeError(f"backprop_ext.{self.where}(): {error}") from None
        for name, value in bound.arguments.items():
            entry = self.checks.get(name)
            if entry is None:
                continue
            position, variadic, check, words = entry
            for i, v in enumerate(value if variadic else (value,)):
                if not check(v):
                    raise TypeError(
                        f"backprop_ext.{self.where}(): argument '{name}' (position "
                        f"{position + i}) must be {words}, not {type(v).__name__}")

    def reraise(self, error: BaseException, args: tuple, kwargs: dict) -> None:
        """For a call that raised `error`: raises the error its user should see (a TypeError
        naming the first argument not of its annotation, or `error`'s class with a message
        naming backprop_ext.<where>); returns when `error` names it already."""
        if not isinstance(error, Exception):
            return
        message = str(error)
        inner = _PUBLIC_NAME.match(message)
        if inner is not None and inner.group(1) == self.where:  # raised in our words already
            return
        self.check(args, kwargs)
        body = message[inner.end():] if inner is not None else message
        kind = TypeError if isinstance(error, AttributeError) else type(error)  # never that
        try:
            public = kind(f"backprop_ext.{self.where}(): {body}")
        except Exception:  # an exception class whose constructor takes more than a message
            return
        raise public from error


def public_function(where: str, lax_bool=(), upfront: bool = True):
    """Function decorator: a failed call re-raised as Checker.reraise says (bools checked
    strictly but for `lax_bool`); with upfront, the arguments are checked on the way in too
    (a few microseconds: for functions off the training step's path)."""

    def decorate(fn):
        checker = Checker(where, fn, lax_bool=lax_bool)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if upfront:
                checker.check(args, kwargs)
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                checker.reraise(error, args, kwargs)
                raise

        return wrapper

    return decorate


def public_init(where: str):
    """Class decorator: the Module's constructor raises as `Checker` says, naming
    backprop_ext.<where>. The arguments the class adds to its torch.nn base's are checked on
    the way in; the base's only when the construction fails."""

    def decorate(cls):
        init = cls.__init__
        base = next((b for b in cls.__mro__[1:] if b.__module__.startswith("torch.nn")
                     and b is not torch.nn.Module), None)
        inherited = () if base is None else tuple(_signature(base.__init__).parameters)
        errors = Checker(where, init, lax_bool=inherited, drop_self=True)
        own = Checker(where, init, skip=inherited, drop_self=True)
        own_checks = bool(own.checks)

        @functools.wraps(init)
        def __init__(self, *args, **kwargs):
            if own_checks:
                own.check(args, kwargs)
            try:
                init(self, *args, **kwargs)
            except Exception as error:
                errors.reraise(error, args, kwargs)
                raise

        cls.__init__ = __init__
        return cls

    return decorate
