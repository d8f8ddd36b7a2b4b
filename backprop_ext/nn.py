"""Drop-in Modules and convert().

Each Module subclasses its torch.nn counterpart: same constructor, attributes, repr and
state_dict, so isinstance checks, configs and checkpoints keep working; only forward() runs our
kernels.
"""

from __future__ import annotations

import torch

from . import functional as F
from .checkpoint import Checkpoint, CheckpointedSequential

__all__ = [
    "ReLU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Softplus",
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
}


def _swap(module: torch.nn.Module) -> torch.nn.Module:
    ours = _REPLACEMENTS.get(type(module))
    if ours is None:
        return module
    # Our classes add no state of their own: re-badging the instance keeps every attribute,
    # parameter, buffer and hook exactly as they were.
    module.__class__ = ours
    return module


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Swaps every supported torch.nn layer in `model` for backprop_ext's, in place, and returns
    the model. Parameters, buffers and state_dict keys are unchanged."""
    for module in model.modules():
        _swap(module)
    return model
