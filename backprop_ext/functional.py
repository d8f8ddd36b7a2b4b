"""torch.nn.functional-shaped entry points: same names, argument names and defaults.

The activations are generated from the activation table (backprop_ext.ops.activation.FUNCTIONS):
relu, leaky_relu, gelu, silu, sigmoid, tanh, softplus, hardsigmoid, hardswish, relu6, elu,
selu, mish, quick_gelu.
"""

from .ops.activation import FUNCTIONS as _ACTIVATION_FUNCTIONS
from .ops.cross_entropy import cross_entropy
from .ops.gated import gated, geglu, swiglu
from .ops.linear import linear
from .ops.linear_cross_entropy import linear_cross_entropy
from .ops.softmax import log_softmax, logsumexp, softmax

globals().update(_ACTIVATION_FUNCTIONS)

__all__ = [*_ACTIVATION_FUNCTIONS, "gated", "swiglu", "geglu", "linear", "softmax",
           "log_softmax", "logsumexp", "cross_entropy", "linear_cross_entropy"]
