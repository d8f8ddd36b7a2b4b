"""torch.nn-shaped Modules on backprop_ext's kernels, and convert(model).

Each Module subclasses its torch.nn counterpart (same constructor, attributes, repr and
state_dict); convert() swaps a model's layers for them in place.
"""

from ..checkpoint import Checkpoint, CheckpointedSequential
from .convert import ConversionReport, convert, register_conversion
from .modules import (
    ACTIVATION_MODULES,
    Conv1D,
    CrossEntropyLoss,
    GatedMLP,
    Linear,
    LinearCrossEntropy,
    LinearCrossEntropyLoss,
    LogSoftmax,
    Softmax,
)

globals().update(ACTIVATION_MODULES)

__all__ = [*ACTIVATION_MODULES, "Linear", "Softmax", "LogSoftmax", "CrossEntropyLoss",
           "LinearCrossEntropy", "LinearCrossEntropyLoss", "Conv1D", "GatedMLP", "convert",
           "register_conversion", "ConversionReport", "Checkpoint", "CheckpointedSequential"]
