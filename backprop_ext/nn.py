"""Drop-in Modules and convert().

Each Module subclasses its torch.nn counterpart: same constructor, attributes, repr and
state_dict, so isinstance checks, configs and checkpoints keep working; only forward() runs our
kernels.
"""

from __future__ import annotations

import torch

from . import functional as F
from .checkpoint import Checkpoint, CheckpointedSequential
from .linear import parse_activation

__all__ = [
    "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softplus", "Linear",
    "Softmax", "LogSoftmax", "CrossEntropyLoss", "convert",
    "Checkpoint", "CheckpointedSequential",
]


class ReLU(torch.nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)


class GELU(torch.nn.GELU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gelu(input, approximate=self.approximate)


class SiLU(torch.nn.SiLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.silu(input, inplace=self.inplace)


class Sigmoid(torch.nn.Sigmoid):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.sigmoid(input)


class Tanh(torch.nn.Tanh):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.tanh(input)


class Softplus(torch.nn.Softplus):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softplus(input, self.beta, self.threshold)


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


# torch.nn class -> ours. Matched on the exact type, so user subclasses (which may override
# forward) are left alone.
_REPLACEMENTS: dict[type, type] = {
    torch.nn.ReLU: ReLU,
    torch.nn.LeakyReLU: LeakyReLU,
    torch.nn.GELU: GELU,
    torch.nn.SiLU: SiLU,
    torch.nn.Sigmoid: Sigmoid,
    torch.nn.Tanh: Tanh,
    torch.nn.Softplus: Softplus,
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
    """The linear() activation argument equivalent to `module`, or None if it is not one we fuse.

    Exact types only (torch's or ours): a subclass may compute something else.
    """
    kind = _REPLACEMENTS.get(type(module), type(module))
    if kind is LeakyReLU:
        return ("leaky_relu", module.negative_slope)
    if kind is GELU:
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if kind is Softplus:
        return ("softplus", module.beta, module.threshold)
    names = {ReLU: "relu", SiLU: "silu", Sigmoid: "sigmoid", Tanh: "tanh"}
    return names.get(kind)


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
