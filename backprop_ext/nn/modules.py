"""Drop-in Modules.

Each Module subclasses its torch.nn counterpart: same constructor, attributes, repr and
state_dict, so isinstance checks, configs and checkpoints keep working; only forward() runs our
kernels.
"""

from __future__ import annotations

import torch

from .. import functional as F
from ..ops.linear import parse_activation

# The activation Modules (ReLU, GELU, ...) are written out from the activation table in
# nn/activations.py.

__all__ = ["Linear", "Softmax", "LogSoftmax", "CrossEntropyLoss", "LinearCrossEntropy", "Conv1D",
           "GatedMLP"]


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


class Conv1D(torch.nn.Module):
    """transformers' Conv1D (GPT-2's linear layer, weight stored transposed) on our linear:
    input @ weight + bias, with an optional fused activation as in Linear.

    Same parameters as transformers.pytorch_utils.Conv1D(nf, nx): weight (nx, nf) = (in, out) and
    bias (nf,), under the same names, so state_dicts load both ways. convert() re-badges
    transformers' instances to this class, keeping their Parameters (no copy) and hooks.
    """

    activation = None  # class default: re-badged instances have no such attribute

    def __init__(self, nf: int, nx: int, *, activation=None) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = torch.nn.Parameter(torch.empty(nx, nf))
        self.bias = torch.nn.Parameter(torch.zeros(nf))
        torch.nn.init.normal_(self.weight, std=0.02)
        if activation is not None:
            parse_activation(activation)
            self.activation = activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # weight.t() is a view: the GEMMs read the (in, out) storage as it is.
        return F.linear(input, self.weight.t(), self.bias, activation=self.activation)

    def __repr__(self) -> str:
        act = "" if self.activation is None else f", activation={self.activation!r}"
        return f"Conv1D(nf={self.nf}, nx={self.nx}{act})"


class GatedMLP(torch.nn.Module):
    """down_proj(f(gate_proj(x)) * up_proj(x)), the MLP of Llama, Mistral, Qwen2 and Gemma, with
    the gate's activation and the product fused (backprop_ext.functional.gated): one pass each
    way, and backward keeps gate_proj's and up_proj's outputs, not f of the first.

    Parameters as transformers' LlamaMLP: gate_proj, up_proj (Linear(hidden_size,
    intermediate_size, bias)) and down_proj (Linear(intermediate_size, hidden_size, bias)), so
    state_dicts load both ways. activation: as functional.gated takes it ("silu": SwiGLU;
    ("gelu", "tanh"): Gemma's GeGLU). forward(x (*, hidden_size)) -> (*, hidden_size).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation="silu",
                 bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        parse_activation(activation)
        self.hidden_size, self.intermediate_size = hidden_size, intermediate_size
        self.activation = activation
        factory = {"bias": bias, "device": device, "dtype": dtype}
        self.gate_proj = Linear(hidden_size, intermediate_size, **factory)
        self.up_proj = Linear(hidden_size, intermediate_size, **factory)
        self.down_proj = Linear(intermediate_size, hidden_size, **factory)

    @classmethod
    def from_projections(cls, gate_proj: torch.nn.Linear, up_proj: torch.nn.Linear,
                         down_proj: torch.nn.Linear, activation) -> GatedMLP:
        """A GatedMLP made of these three modules themselves (their Parameters and hooks)."""
        mlp = cls.__new__(cls)
        torch.nn.Module.__init__(mlp)
        mlp.hidden_size, mlp.intermediate_size = gate_proj.in_features, gate_proj.out_features
        mlp.activation = activation
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = gate_proj, up_proj, down_proj
        return mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gated(self.gate_proj(x), self.up_proj(x), self.activation))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
