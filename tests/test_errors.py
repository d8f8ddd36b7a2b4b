"""Bad input to every public function and activation Module: torch's kind of exception, a message
naming the public function (and, for a wrong type, the argument), never an AttributeError.

The table of calls is built from inspect.signature of every name in backprop_ext.functional's
__all__, so a new function is covered without new test code; torch's counterpart (same name in
torch.nn.functional, or torch) is called with the same bad value where it exists, and our
exception must be of its kind.
"""

import collections.abc
import inspect
import re
import types
import typing
import warnings

import pytest
import torch
import torch.nn.functional as TF
import torch.utils.checkpoint

import backprop_ext.checkpoint as BC
import backprop_ext.functional as BF
import backprop_ext.nn as bnn
import backprop_ext.utils as BU

# A valid value for each argument name the public functions use without a default.
_X = torch.randn(3, 4)
_VALID = {"input": _X, "gate": _X, "up": _X, "weight": torch.randn(2, 4),
          "linear_weight": torch.randn(2, 4), "target": torch.zeros(3, dtype=torch.long),
          "dim": 0}

_TENSOR_BAD = {"None": None, "list": [1.0], "str": "a", "float": 1.5,
               "int tensor": torch.ones(3, 4, dtype=torch.long)}
_OTHER_BAD = {"str": "a", "list": [1]}

# The kinds torch's errors come in; NotImplementedError (torch's "not implemented for 'Long'")
# is a RuntimeError, and torch's own AttributeError on None (F.sigmoid(None)) a TypeError here.
_KINDS = (TypeError, ValueError, IndexError, RuntimeError)


def _kind(error: BaseException) -> type:
    if isinstance(error, AttributeError):
        return TypeError
    if isinstance(error, AssertionError):  # torch's meta-tensor checks (torch._prims_common)
        return RuntimeError  # assert what its CPU kernels raise as a RuntimeError
    return next((k for k in _KINDS if isinstance(error, k)), type(error))


def _dimname_lookup(error: BaseException) -> bool:
    """torch before 2.14 takes a str dim as a named tensor's dimension name, and fails looking
    it up; ours, like torch 2.14, rejects the type."""
    return re.match(r"Name '.*' not found in Tensor", str(error)) is not None


def _counterpart(name):
    return getattr(TF, name, None) or getattr(torch, name, None)


def _cases():
    for name in BF.__all__:
        fn = getattr(BF, name)
        if inspect.isclass(fn):  # LinearCrossEntropyOptions: a dataclass of torch's, not a function
            continue
        for param in inspect.signature(fn).parameters.values():
            if param.name.startswith("_") or param.kind is param.VAR_KEYWORD:
                continue
            is_tensor = param.name in ("input", "gate", "up", "weight", "target", "bias",
                                       "linear_weight", "linear_bias")
            bad = _TENSOR_BAD if is_tensor else _OTHER_BAD
            if param.name in ("inplace", "size_average", "reduce", "activation"):
                continue  # torch takes anything truthy (inplace) or a spec checked elsewhere
            for label, value in bad.items():
                if label in ("int tensor", "float") and param.name != "input" and (
                        param.name != "gate"):
                    continue  # a wrong dtype is the first tensor's; others: shape checks
                case = f"{name}-{param.name}-{label}"
                marks = ([pytest.mark.xfail(reason=_FUNCTIONAL_OPS_FIXES[case], strict=True)]
                         if case in _FUNCTIONAL_OPS_FIXES else [])
                yield pytest.param(name, param.name, value, id=case, marks=marks)


_FUNCTIONAL_OPS_FIXES: dict[str, str] = {}  # case -> why ours differs from torch (none now)


def _call(fn, name, arg, value):
    sig = inspect.signature(fn)
    kwargs = {}
    for p in sig.parameters.values():
        if p.name == arg:
            kwargs[p.name] = value
        elif p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
            kwargs[p.name] = _VALID[p.name]
    return fn(**kwargs)


@pytest.mark.parametrize(("name", "arg", "value"), list(_cases()))
def test_bad_argument(name, arg, value):
    ours = getattr(BF, name)
    error = None
    try:
        _call(ours, name, arg, value)
    except Exception as raised:
        error = raised
    if error is None:
        pytest.skip("accepted (torch accepts some of these too)")
    assert not isinstance(error, AttributeError), f"{type(error).__name__}: {error}"
    assert f"backprop_ext.{name}" in str(error), f"message names no public function: {error}"
    assert "p0" not in str(error) and "activation_fwd" not in str(error), str(error)
    torch_fn = _counterpart(name)
    if torch_fn is None or arg not in _torch_params(torch_fn, name):
        return
    try:
        _call_torch(torch_fn, name, arg, value)
    except Exception as theirs:
        if arg == "dim" and _dimname_lookup(theirs):
            return
        assert _kind(error) is _kind(theirs), (
            f"ours {type(error).__name__}: {error}; torch's {type(theirs).__name__}: {theirs}")
        if isinstance(theirs, TypeError) and isinstance(error, TypeError):
            assert arg in str(error), f"message names no argument: {error}"


def _torch_params(torch_fn, name):
    try:
        return inspect.signature(torch_fn).parameters
    except ValueError:  # a builtin: torch.nn.functional's documented names
        return {"gelu": ("input", "approximate"), "softplus": ("input", "beta", "threshold"),
                "logsumexp": ("input", "dim", "keepdim")}.get(name, ())


def _call_torch(torch_fn, name, arg, value):
    ours = inspect.signature(getattr(BF, name)).parameters
    kwargs = {p: value if p == arg else _VALID[p] for p, v in ours.items()
              if p == arg or (v.default is inspect.Parameter.empty)}
    if name == "logsumexp":
        return torch_fn(kwargs.pop("input"), **kwargs)
    return torch_fn(**kwargs)


@pytest.mark.parametrize("name", list(bnn.ACTIVATION_MODULES))
@pytest.mark.parametrize("value", [None, [1.0], "a"], ids=["None", "list", "str"])
def test_activation_module_forward_rejects_non_tensors(name, value):
    module = bnn.ACTIVATION_MODULES[name]()
    with pytest.raises(TypeError, match=r"argument 'input' \(position 1\) must be Tensor"):
        module(value)


def test_issue_examples():
    x, b = torch.randn(3, 4), torch.randn(2)
    for bad in ([1.0], None):
        with pytest.raises(TypeError, match=r"backprop_ext.linear\(\): argument 'weight'"):
            BF.linear(x, bad, b, activation="gelu")
    for bad in ([1.0], None, 1.0, "a"):
        with pytest.raises(TypeError, match=r"backprop_ext.logsumexp\(\): argument 'input'"):
            BF.logsumexp(bad, 0)
    with pytest.raises(TypeError, match=r"backprop_ext.leaky_relu\(\): argument 'negative_slope'"):
        BF.leaky_relu(x, "a")


# --- The rest of the public surface: every Module of backprop_ext.nn and backprop_ext.checkpoint
# (constructor and forward), and every function of backprop_ext.utils, backprop_ext.checkpoint
# and backprop_ext.nn (convert, register_conversion). The bad values of each argument come from
# its annotation (a value fitting none of the annotated types is bad), so a new function, Module
# or argument is covered once it is annotated; test_every_argument_has_a_kind fails for one that
# is not, and is not listed in _BAD_BY_NAME or _ANYTHING. Where torch has the counterpart (the
# torch.nn base class; torch.nn.utils' function of the same name; torch.utils.checkpoint) it is
# called with the same value, and our exception must be of its kind; where torch accepts the
# value ours may too; without a counterpart ours must raise a TypeError or ValueError. Every
# error's message names backprop_ext and our class or function (or, raised by a forward, the
# backprop_ext.functional function it calls), and a wrong type's names the argument.

_PUBLIC_MODULES = (bnn, BC, BU)

# Arguments whose annotation cannot say what is bad: their bad values by name.
_BAD_BY_NAME = {"activation": {"int": 3, "unknown name": "nope"},
                "device": {"float": 1.5, "unknown device": "nope"}, "dtype": {"str": "a"}}
# Arguments that take anything: passed through to the user's function or module (args, kwargs
# of checkpoint and Checkpoint.forward), or a torch selective-checkpoint policy's (ctx, op).
# size_average and reduce: torch's deprecated loss arguments, taken as they come.
_ANYTHING = {"args", "kwargs", "ctx", "op", "size_average", "reduce",
             ("CheckpointedSequential.forward", "input")}
# Where ours differs from its torch counterpart on purpose (the counterpart is not compared).
_DIFFERS = {("clip_grad_norm_", "foreach"): "foreach=True runs on CPU, see utils/clip.py",
            ("clip_grad_value_", "foreach"): "as above",
            ("clip_grads_with_norm_", "foreach"): "as above",
            ("get_total_norm", "foreach"): "as above",
            ("clip_grad_value_", "parameters"): "torch's foreach clamp raises for no gradients",
            ("checkpoint", "function"): "torch 2.11's checkpoint, given a function it cannot "
                                        "call, raises with its saved-tensor hooks left "
                                        "installed: every later backward would recompute it"}

_CANDIDATES = {"str": lambda: "a", "float": lambda: 1.5, "None": lambda: None,
               "list": lambda: [1.0], "int": lambda: 3}
_TENSOR_CANDIDATES = {"int tensor": lambda: torch.ones(3, 4, dtype=torch.long),
                      "meta tensor": lambda: torch.randn(3, 4, device="meta")}


def _grad_param():
    p = torch.nn.Parameter(torch.randn(3, 4))
    p.grad = torch.randn(3, 4)
    return p


def _model():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
    model(torch.randn(3, 4)).sum().backward()
    return model


# A valid value for each argument without a default, by name (by (owner, name) first).
_VALID_ARG = {
    "in_features": lambda: 4, "out_features": lambda: 2, "num_classes": lambda: 2,
    "hidden_size": lambda: 4, "intermediate_size": lambda: 8, "nf": lambda: 2, "nx": lambda: 4,
    "module": lambda: bnn.Linear(4, 4),
    "parameters": lambda: [_grad_param()], "tensors": lambda: [_grad_param()],
    "max_norm": lambda: 1.0, "total_norm": lambda: torch.tensor(2.0), "clip_value": lambda: 0.5,
    "model": _model, "function": lambda: torch.sin, "cls_or_name": lambda: "tests.NoSuchClass",
    "factory": lambda: (lambda module: module), "ctx": lambda: None,
    "op": lambda: torch.ops.aten.mm.default,
    "input": lambda: torch.randn(3, 4), "x": lambda: torch.randn(3, 4),
    "target": lambda: torch.zeros(3, dtype=torch.long),
    ("CheckpointedSequential", "args"): lambda: (bnn.Linear(4, 4),),
    ("checkpoint", "args"): lambda: (torch.randn(3, 4, requires_grad=True),),
    ("Checkpoint.forward", "args"): lambda: (torch.randn(3, 4, requires_grad=True),),
}


def _valid(owner, name, variadic=False):
    make = _VALID_ARG.get((owner, name), None if variadic else _VALID_ARG.get(name))
    return () if make is None else make()


def _members(annotation):
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _fits(value, member) -> bool:
    if member is type(None):
        return value is None
    if member is bool:
        return isinstance(value, bool)
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if member is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if member is collections.abc.Callable or typing.get_origin(member) is collections.abc.Callable:
        return callable(value)
    origin = typing.get_origin(member)
    return isinstance(value, origin if isinstance(origin, type) else member)


def _bad_values(owner, param) -> dict:
    """label -> a function making the bad value; None: the argument has no kind here."""
    if param.name in _BAD_BY_NAME:
        return {k: (lambda v=v: v) for k, v in _BAD_BY_NAME[param.name].items()}
    if param.name in _ANYTHING or (owner, param.name) in _ANYTHING:
        return {}
    if param.annotation is inspect.Parameter.empty or isinstance(param.annotation, str):
        return None
    members = _members(param.annotation)
    bad = {label: make for label, make in _CANDIDATES.items()
           if not any(_fits(make(), m) for m in members)}
    if torch.Tensor in members:
        bad.update(_TENSOR_CANDIDATES if param.name != "target" else
                   {"float tensor": lambda: torch.randn(3), **_TENSOR_CANDIDATES})
    return bad


def _surface():
    """(owner, callable, phase, class or None) for every public Module's __init__ and forward
    and every public function, named as the user writes it."""
    seen = set()
    for module in _PUBLIC_MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                yield obj.__name__, obj.__init__, "init", obj
                yield f"{obj.__name__}.forward", obj.forward, "forward", obj
            elif inspect.isfunction(obj):
                yield name, obj, "call", None
            # else: result types (dataclasses: GradientFlowReport, CheckpointPlan, ...), tables


def _parameters(fn):
    params = list(inspect.signature(fn, eval_str=True).parameters.values())
    return [p for p in params if p.name != "self" and p.kind is not p.VAR_KEYWORD]


# Known: an op's own checks (backprop_ext/ops/, outside the public front ends) raise another
# kind than torch's for these; the fix belongs in those ops' checks (see each reason).
_OPS_FIXES: dict[str, str] = {}  # case -> why ours differs from torch (none now)


def _surface_cases():
    for owner, fn, phase, cls in _surface():
        for param in _parameters(fn):
            for label in _bad_values(owner, param) or {}:
                case = f"{owner}-{param.name}-{label}"
                marks = ([pytest.mark.xfail(reason=_OPS_FIXES[case], strict=True)]
                         if case in _OPS_FIXES else [])
                yield pytest.param(owner, phase, cls, param.name, label, id=case, marks=marks)


def test_every_argument_has_a_kind():
    """A public argument without an annotation (or an entry above) would go untested."""
    untyped = [f"{owner}({p.name})" for owner, fn, _, _ in _surface() for p in _parameters(fn)
               if _bad_values(owner, p) is None]
    assert not untyped, f"annotate these, or list them in _BAD_BY_NAME / _ANYTHING: {untyped}"


def _arguments(owner, fn, arg, value):
    args, kwargs = [], {}
    params = _parameters(fn)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in params)
    for p in params:
        if p.name == arg:
            v = (value,) if p.kind is p.VAR_POSITIONAL else value
        elif p.default is inspect.Parameter.empty:
            v = _valid(owner, p.name, p.kind is p.VAR_POSITIONAL)
        else:
            continue
        if p.kind is p.VAR_POSITIONAL:
            args.extend(v)
        elif variadic and p.kind is p.POSITIONAL_OR_KEYWORD:
            args.append(v)
        else:
            kwargs[p.name] = v
    return args, kwargs


def _torch_base(cls):
    """The torch Module ours stands in for (a private base, as _WeightedLoss on a torch without
    LinearCrossEntropyLoss, is none)."""
    return next((b for b in cls.__mro__[1:] if b.__module__.startswith("torch.nn")
                 and b is not torch.nn.Module and not b.__name__.startswith("_")), None)


def _run_module(cls, owner, phase, arg, value):
    """Constructs cls (with the bad value if phase is init) and runs its forward (with the bad
    value if phase is forward); returns the exception, or None."""
    try:
        args, kwargs = _arguments(cls.__name__, cls.__init__, arg if phase == "init" else None,
                                  value)
        module = cls(*args, **kwargs)
        args, kwargs = _arguments(f"{cls.__name__}.forward", cls.forward,
                                  arg if phase == "forward" else None, value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Softmax's implicit dim
            module(*args, **kwargs)
    except Exception as error:
        return error
    return None


def _run_function(owner, fn, arg, value):
    try:
        args, kwargs = _arguments(owner, fn, arg, value)
        fn(*args, **kwargs)
    except Exception as error:
        return error
    return None


def _torch_checkpoint(function, *args, preserve_rng_state=True, determinism_check="default"):
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False,
                                             preserve_rng_state=preserve_rng_state,
                                             determinism_check=determinism_check)


def _torch_function(owner):
    if owner == "checkpoint":
        return _torch_checkpoint
    return getattr(torch.nn.utils, owner, None)


@pytest.mark.parametrize(("owner", "phase", "cls", "arg", "label"), list(_surface_cases()))
def test_bad_argument_rest_of_surface(owner, phase, cls, arg, label):
    fn = dict((o, f) for o, f, _, _ in _surface())[owner]
    bad = _bad_values(owner, next(p for p in _parameters(fn) if p.name == arg))[label]
    if cls is not None:
        error = _run_module(cls, owner, phase, arg, bad())
        base = _torch_base(cls)
        theirs_fn = base if phase == "init" else (base.forward if base is not None else None)
        has_counterpart = base is not None and arg in inspect.signature(theirs_fn).parameters
        theirs = _run_module(base, owner, phase, arg, bad()) if has_counterpart else None
    else:
        error = _run_function(owner, fn, arg, bad())
        torch_fn = _torch_function(owner)
        has_counterpart = (torch_fn is not None and (owner, arg) not in _DIFFERS
                           and arg in inspect.signature(torch_fn).parameters)
        theirs = _run_function(owner, torch_fn, arg, bad()) if has_counterpart else None
    if error is None and "tensor" in label and not has_counterpart:
        return  # a dtype or device our function takes (quick_gelu on meta tensors)
    if error is None:
        assert has_counterpart, f"{owner} accepts {arg}={bad()!r}, which fits no annotated type"
        assert theirs is None, (f"torch's {type(theirs).__name__} ({theirs}), ours accepts "
                                f"{arg}={bad()!r}")
        return
    message = str(error)
    assert not isinstance(error, AttributeError), f"{type(error).__name__}: {message}"
    assert "backprop_ext." in message, f"message names no public function: {message}"
    names = [owner.split(".")[0]] + (list(BF.__all__) if phase != "call" else [])
    assert any(re.search(rf"\b{re.escape(n)}\b", message) for n in names), (
        f"message names neither {owner} nor the function it calls: {message}")
    assert "p0" not in message and "activation_fwd" not in message, message
    if theirs is not None and not (arg == "dim" and _dimname_lookup(theirs)):
        assert _kind(error) is _kind(theirs), (
            f"ours {type(error).__name__}: {error}; torch's {type(theirs).__name__}: {theirs}")
    elif not has_counterpart:  # a wrong dtype or device: torch's RuntimeError
        torchs = "tensor" in label or label == "unknown device"
        kinds = (TypeError, ValueError) + ((RuntimeError,) if torchs else ())
        assert isinstance(error, kinds), f"{type(error).__name__}: {message}"
    if isinstance(error, TypeError) and "tensor" not in label:
        assert arg in message, f"message names no argument: {message}"
