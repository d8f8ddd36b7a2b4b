"""Drop-in Modules and convert().

Each Module subclasses its torch.nn counterpart: same constructor, attributes, repr and
state_dict, so isinstance checks, configs and checkpoints keep working; only forward() runs our
kernels.
"""

from __future__ import annotations

import torch

from . import activation as _activation
from . import functional as F
from .checkpoint import Checkpoint, CheckpointedSequential
from .linear import parse_activation

# --- activations: one Module per torch.nn class of the activation table, generated from it


def _make_module(module: str, rows: tuple) -> type:
    """torch.nn.<module>'s subclass whose forward runs our functional with the module's
    attributes (named like the functional's parameters), generated as source so that a call
    costs what a hand-written forward costs. For a row torch.nn has no Module for (quick_gelu),
    a torch.nn.Module taking the functional's parameters as keyword arguments instead."""
    base = getattr(torch.nn, module, None)
    function = rows[0].function
    if any(r.function != function for r in rows):
        raise RuntimeError(f"activation table: torch.nn.{module} computes more than one function")
    arguments = rows[0].arguments
    args = "".join(f", self.{a}" for a, _ in arguments)
    source = f"def forward(self, input):\n    return _fn(input{args})\n"
    if base is None:
        params = "".join(f", {a}={v!r}" for a, v in arguments)
        source += (f"def __init__(self{params}):\n    torch.nn.Module.__init__(self)\n"
                   + "".join(f"    self.{a} = {a}\n" for a, _ in arguments))
        source += ("def extra_repr(self):\n    return " + (
            " + ', '.join([" + ", ".join(f"f'{a}={{self.{a}!r}}'" for a, _ in arguments) + "])"
            if arguments else "''") + "\n")
    scope = {"_fn": getattr(F, function), "torch": torch}
    exec(source, scope)  # noqa: S102 - source built above from the activation table
    body = {name: scope[name] for name in ("forward", "__init__", "extra_repr") if name in scope}
    for name, fn in body.items():
        fn.__qualname__ = f"{module}.{name}"
    if base is None:
        doc = (f"{rows[0].signature} as a Module, on backprop_ext's kernels (torch.nn has none).")
    else:
        doc = (f"torch.nn.{module} on backprop_ext's kernels (backprop_ext.functional.{function}): "
               "same constructor, attributes, repr and state_dict.")
    return type(module, (base or torch.nn.Module,), {**body, "__module__": __name__,
                                                     "__doc__": doc})


ACTIVATION_MODULES: dict[str, type] = {}
for _spec in _activation.SPECS.values():
    if _spec.module not in ACTIVATION_MODULES:
        ACTIVATION_MODULES[_spec.module] = _make_module(
            _spec.module, tuple(r for r in _activation.SPECS.values() if r.module == _spec.module))
del _spec
globals().update(ACTIVATION_MODULES)

__all__ = [
    *ACTIVATION_MODULES, "Linear", "Softmax", "LogSoftmax", "CrossEntropyLoss",
    "LinearCrossEntropy", "convert", "Checkpoint", "CheckpointedSequential",
]


class Softmax(torch.nn.Softmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


class Linear(torch.nn.Linear):
    """torch.nn.Linear with an optional fused activation: act(input @ weight.T + bias).

    Same parameters (weight (out_features, in_features), bias (out_features,)), initialization
    and state_dict as torch.nn.Linear, so checkpoints load both ways. `activation` takes what
    backprop_ext.functional.linear takes: None, a name ("gelu", "relu", ...) or a
    (name, *params) tuple such as ("leaky_relu", 0.2) or ("gelu", "tanh"). recompute_preact:
    see backprop_ext.functional.linear.
    """

    # Class defaults, so that torch.nn.Linear instances re-badged by convert() (which have no
    # such instance attributes) behave as plain linear layers.
    activation = None
    recompute_preact = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, activation=None, recompute_preact: bool = False) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        if activation is not None:
            parse_activation(activation)  # fail now, not at the first forward
            self.activation = activation
        if recompute_preact:
            self.recompute_preact = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias, activation=self.activation,
                        recompute_preact=self.recompute_preact)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.activation is not None:
            extra += f", activation={self.activation!r}"
        if self.recompute_preact:
            extra += ", recompute_preact=True"
        return extra


class LinearCrossEntropy(torch.nn.Module):
    """A language-model head and its loss in one: cross_entropy(input @ weight.T + bias, target)
    by backprop_ext.functional.linear_cross_entropy, without materializing the logits.

    Holds the head like torch.nn.Linear(in_features, out_features, bias) does: parameters
    `weight` (out_features, in_features) and `bias` (out_features,) or None, under the same names,
    with the same initialization, so state_dicts load both ways. out_features is the number of
    classes (the vocabulary). The loss options are F.cross_entropy's (class_weight is its
    `weight`, kept as a buffer outside the state_dict); chunk_size: rows per block of logits
    (None: linear_cross_entropy's default).

    forward(input (*, in_features), target (*) int64) -> the loss. For the logits themselves
    (generation), F.linear(input, head.weight, head.bias).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, class_weight: torch.Tensor | None = None,
                 ignore_index: int = -100, label_smoothing: float = 0.0,
                 reduction: str = "mean", chunk_size: int | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(torch.empty((out_features, in_features), **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("class_weight", class_weight, persistent=False)
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing
        self.reduction, self.chunk_size = reduction, chunk_size
        self.reset_parameters()

    reset_parameters = torch.nn.Linear.reset_parameters  # the same initialization as nn.Linear

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, **loss_options) -> LinearCrossEntropy:
        """A LinearCrossEntropy sharing `linear`'s weight and bias (the same Parameters, so an
        optimizer over the model still sees them); loss_options as the constructor's."""
        head = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                   device="meta", **loss_options)
        head.weight, head.bias = linear.weight, linear.bias
        return head

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.linear_cross_entropy(
            input, self.weight, target, self.bias, class_weight=self.class_weight,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction, chunk_size=self.chunk_size)

    def extra_repr(self) -> str:
        extra = (f"in_features={self.in_features}, out_features={self.out_features}, "
                 f"bias={self.bias is not None}, reduction={self.reduction!r}")
        if self.ignore_index != -100:
            extra += f", ignore_index={self.ignore_index}"
        if self.label_smoothing:
            extra += f", label_smoothing={self.label_smoothing}"
        if self.class_weight is not None:
            extra += ", class_weight=(...)"
        if self.chunk_size is not None:
            extra += f", chunk_size={self.chunk_size}"
        return extra


# torch.nn class -> ours. Matched on the exact type, so user subclasses (which may override
# forward) are left alone.
_REPLACEMENTS: dict[type, type] = {
    **{getattr(torch.nn, name): cls for name, cls in ACTIVATION_MODULES.items()
       if hasattr(torch.nn, name)},
    torch.nn.Softmax: Softmax,
    torch.nn.LogSoftmax: LogSoftmax,
    torch.nn.CrossEntropyLoss: CrossEntropyLoss,
    torch.nn.Linear: Linear,
}


def _swap(module: torch.nn.Module) -> torch.nn.Module:
    ours = _REPLACEMENTS.get(type(module))
    if ours is None:
        return module
    # Our classes add no state of their own: re-badging the instance keeps every attribute,
    # parameter, buffer and hook exactly as they were.
    module.__class__ = ours
    return module


def _activation_of(module: torch.nn.Module):
    """The linear() activation argument equivalent to `module`, or None if it is not one we fuse:
    the row's name, with its float parameters as a tuple when it has any ("gelu_tanh",
    ("leaky_relu", 0.2)).

    Exact types only (torch's or ours): a subclass may compute something else.
    """
    kind = _REPLACEMENTS.get(type(module), type(module))
    if ACTIVATION_MODULES.get(kind.__name__) is not kind:
        return None
    for spec in _activation.SPECS.values():
        if spec.module == kind.__name__ and all(
                getattr(module, key) == value for key, value in spec.selector):
            params = tuple(getattr(module, p) for p in spec.params)
            return (spec.name, *params) if params else spec.name
    return None


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def _fuse_sequential(seq: torch.nn.Sequential) -> None:
    names = list(seq._modules)
    for first, second in zip(names, names[1:]):
        lin, act = seq._modules[first], seq._modules[second]
        if type(lin) is not Linear or lin.activation is not None:
            continue
        spec = _activation_of(act) if act is not None else None
        # A hook on either module would observe a different tensor once they are fused.
        if spec is None or _has_hooks(lin) or _has_hooks(act):
            continue
        lin.activation = spec
        seq._modules[second] = torch.nn.Identity()


def convert(model: torch.nn.Module, *, fuse: bool = False) -> torch.nn.Module:
    """Swaps every supported torch.nn layer in `model` for backprop_ext's, in place, and returns
    the model. Parameters, buffers and state_dict keys are unchanged.

    fuse=True also folds each activation module that directly follows a Linear inside an
    nn.Sequential into that Linear (Linear(..., activation=...)), leaving an nn.Identity in its
    place so that indices and state_dict keys stay as they were. Pairs where either module has
    hooks, or is a user subclass, are left apart.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError("backprop_ext.nn.convert: expected model to be a torch.nn.Module, got "
                        f"{type(model).__name__}")
    for module in model.modules():
        _swap(module)
    if fuse:
        for module in list(model.modules()):
            if isinstance(module, torch.nn.Sequential):
                _fuse_sequential(module)
    return model
