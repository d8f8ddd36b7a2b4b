"""Drop-in Modules.

Each Module subclasses its torch.nn counterpart: same constructor, attributes, repr and
state_dict, so isinstance checks, configs and checkpoints keep working; only forward() runs our
kernels.
"""

from __future__ import annotations

import math

import torch

from .. import functional as F
from ..ops.autograd import saved_tensors_hooked
from ..ops.errors import public_init
from ..ops.linear import parse_activation

# The activation Modules (ReLU, GELU, ...) are written out from the activation table in
# nn/activations.py.

__all__ = ["Linear", "Softmax", "LogSoftmax", "CrossEntropyLoss", "LinearCrossEntropy",
           "LinearCrossEntropyLoss", "Conv1D", "GatedMLP"]


# Bad constructor arguments raise naming the class and the argument (ops.errors.public_init);
# the arguments' annotations are what is checked.
Device = torch.device | str | int


@public_init("nn.Softmax")
class Softmax(torch.nn.Softmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


@public_init("nn.LogSoftmax")
class LogSoftmax(torch.nn.LogSoftmax):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(input, self.dim, _stacklevel=5)


@public_init("nn.CrossEntropyLoss")
class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                               reduction=self.reduction, label_smoothing=self.label_smoothing)


@public_init("nn.Linear")
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Device | None = None, dtype: torch.dtype | None = None, *,
                 activation=None, recompute_preact: bool = False) -> None:
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


@public_init("nn.LinearCrossEntropy")
class LinearCrossEntropy(torch.nn.Module):
    """A language-model head and its loss in one: cross_entropy(input @ weight.T + bias, target)
    by backprop_ext.functional.linear_cross_entropy, without materializing the logits.

    Holds the head like torch.nn.Linear(in_features, out_features, bias) does: parameters
    `weight` (out_features, in_features) and `bias` (out_features,) or None, under the same names,
    with the same initialization, so state_dicts load both ways (torch's LinearCrossEntropyLoss,
    and ours below, hold theirs as `linear.weight`). out_features is the number of classes (the
    vocabulary). The loss options are linear_cross_entropy's: class_weight is its `weight` (the
    name `weight` is the head's Parameter here), kept as a buffer outside the state_dict;
    options: a LinearCrossEntropyOptions (batch_chunk_size: rows per block) or None.

    forward(input (*, in_features), target (*) int64) -> the loss. For the logits themselves
    (generation), F.linear(input, head.weight, head.bias).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Device | None = None, dtype: torch.dtype | None = None, *,
                 class_weight: torch.Tensor | None = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, reduction: str = "mean",
                 options: F.LinearCrossEntropyOptions | None = None) -> None:
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
        self.reduction, self.options = reduction, options
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
            input, self.weight, target, linear_bias=self.bias, weight=self.class_weight,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
            reduction=self.reduction, options=self.options)

    def extra_repr(self) -> str:
        extra = (f"in_features={self.in_features}, out_features={self.out_features}, "
                 f"bias={self.bias is not None}, reduction={self.reduction!r}")
        if self.ignore_index != -100:
            extra += f", ignore_index={self.ignore_index}"
        if self.label_smoothing:
            extra += f", label_smoothing={self.label_smoothing}"
        if self.class_weight is not None:
            extra += ", class_weight=(...)"
        if self.options is not None:
            extra += f", options={self.options}"
        return extra


def _linear_cross_entropy_loss_forward(self, input: torch.Tensor,
                                       target: torch.Tensor) -> torch.Tensor:
    linear_weight = self.linear.weight.reshape(
        (self.num_classes, *self.out_features, self.linear.in_features))
    linear_bias = (self.linear.bias.reshape((self.num_classes, *self.out_features))
                   if self.linear.bias is not None else None)
    return F.linear_cross_entropy(
        input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
        reduction=self.reduction, ignore_index=self.ignore_index,
        label_smoothing=self.label_smoothing, options=self.options)


if hasattr(torch.nn, "LinearCrossEntropyLoss"):  # torch >= 2.14

    @public_init("nn.LinearCrossEntropyLoss")
    class LinearCrossEntropyLoss(torch.nn.LinearCrossEntropyLoss):
        """torch.nn.LinearCrossEntropyLoss on backprop_ext.functional.linear_cross_entropy:
        same constructor, parameters (linear.weight, linear.bias), class-weight buffer `weight`,
        state_dict and repr. Every call is chunked (torch's options=None materializes the
        logits; ours never does, see linear_cross_entropy for what each options field does
        here)."""

        forward = _linear_cross_entropy_loss_forward

else:

    @public_init("nn.LinearCrossEntropyLoss")
    class LinearCrossEntropyLoss(torch.nn.modules.loss._WeightedLoss):
        """torch 2.14's torch.nn.LinearCrossEntropyLoss, for torch 2.11-2.13 (which lack it):
        the same constructor, parameters (linear.weight, linear.bias), class-weight buffer
        `weight`, state_dict and repr, on backprop_ext.functional.linear_cross_entropy."""

        def __init__(self, in_features: int, num_classes: int, *,
                     out_features: tuple[int, ...] = (), bias: bool = False,
                     device: Device | None = None, dtype: torch.dtype | None = None,
                     reduction: str = "mean", weight: torch.Tensor | None = None,
                     ignore_index: int | None = None, label_smoothing: float = 0.0,
                     options: F.LinearCrossEntropyOptions | None = None) -> None:
            if weight is not None and weight.shape != (num_classes,):
                raise RuntimeError(f"expected weight shape to be {(num_classes,)}, got "
                                   f"{tuple(weight.shape)}")
            if label_smoothing < 0 or label_smoothing > 1.0:
                raise RuntimeError("expected label_smoothing to be in range [0, 1], got "
                                   f"{label_smoothing}")
            super().__init__(weight=weight, size_average=None, reduce=None, reduction=reduction)
            self.num_classes = num_classes
            self.out_features = tuple(out_features)
            self.ignore_index = ignore_index
            self.label_smoothing = label_smoothing
            self.linear = torch.nn.Linear(in_features, math.prod(out_features, start=num_classes),
                                          bias=bias, device=device, dtype=dtype)
            self.options = options

        forward = _linear_cross_entropy_loss_forward

        def extra_repr(self) -> str:
            return (f"in_features={self.linear.in_features}, num_classes={self.num_classes}, "
                    f"out_features={self.out_features}, bias={self.linear.bias is not None}, "
                    f"reduction={self.reduction}, ignore_index={self.ignore_index}, "
                    f"label_smoothing={self.label_smoothing}, options={self.options}")


@public_init("nn.Conv1D")
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


@public_init("nn.GatedMLP")
class GatedMLP(torch.nn.Module):
    """down_proj(f(gate_proj(x)) * up_proj(x)), the MLP of Llama, Mistral, Qwen2 and Gemma, with
    the gate's activation and the product fused (backprop_ext.functional.gated): one pass each
    way, and backward keeps gate_proj's and up_proj's outputs, not f of the first; in eager
    autograd it does not keep down_proj's input f(gate) * up either, but recomputes it from
    them (see _product_recomputed).

    Parameters as transformers' LlamaMLP: gate_proj, up_proj (Linear(hidden_size,
    intermediate_size, bias)) and down_proj (Linear(intermediate_size, hidden_size, bias)), so
    state_dicts load both ways. activation: as functional.gated takes it ("silu": SwiGLU;
    ("gelu", "tanh"): Gemma's GeGLU). forward(x (*, hidden_size)) -> (*, hidden_size).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, activation="silu",
                 bias: bool = False, device: Device | None = None,
                 dtype: torch.dtype | None = None) -> None:
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
        try:
            gate, up = self.gate_proj(x), self.up_proj(x)
            product = F.gated(gate, up, self.activation)
            if not _recomputes_product(product):
                return self.down_proj(product)
            with torch.autograd.graph.saved_tensors_hooks(
                    *_product_recomputed(product, gate, up, self.activation)):
                return self.down_proj(product)
        except Exception:
            if not isinstance(x, torch.Tensor):  # the error names gate_proj's `input`
                raise TypeError("backprop_ext.nn.GatedMLP.forward(): argument 'x' (position 1) "
                                f"must be Tensor, not {type(x).__name__}") from None
            raise

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


# GatedMLP's backward keeps gate_proj's and up_proj's outputs (the gated op saves them); the
# product f(gate) * up that down_proj saves as its input is one more intermediate-sized tensor
# per layer (a quarter of a Llama layer's activations), which f(gate) * up recomputes exactly,
# bit for bit, from the two kept ones. So down_proj saves it through a saved-tensor hook that
# keeps a note instead, in the one setting where nothing else decides what is saved: eager
# autograd with no saved-tensor hooks of the user's (checkpointing, save_on_cpu, which must see
# every saved tensor), no forward-mode AD (its jvp reads the saved input in the forward),
# no torch.func transform and no torch.compile (AOTAutograd chooses what to recompute).


def _recomputes_product(product: torch.Tensor) -> bool:
    return (product.requires_grad and product.numel() > 0 and torch.is_grad_enabled()
            and not torch.compiler.is_compiling() and not saved_tensors_hooked()
            and torch.autograd.forward_ad._current_level < 0
            and not torch._C._are_functorch_transforms_active())


def _product_recomputed(product, gate, up, activation):
    """(pack, unpack) hooks under which a saved view of `product`'s storage is kept as a note
    and comes back as f(gate) * up recomputed (differentiable when backward builds a graph)."""
    # Plain values, not the product: the hooks live as long as what they saved.
    storage, dtype, device = product.untyped_storage().data_ptr(), product.dtype, product.device

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() != storage or t.dtype != dtype or t.device != device:
            return t
        return (t.size(), t.stride(), t.storage_offset())

    def unpack(saved):
        if isinstance(saved, torch.Tensor):
            return saved
        size, stride, offset = saved
        return F.gated(gate, up, activation).as_strided(size, stride, offset)

    return pack, unpack
