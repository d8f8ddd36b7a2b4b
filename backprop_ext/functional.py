"""torch.nn.functional-shaped entry points: same names, argument names and defaults.

The activations are generated from the activation table (backprop_ext.activation.FUNCTIONS):
relu, leaky_relu, gelu, silu, sigmoid, tanh, softplus, ...
"""

from .activation import FUNCTIONS as _ACTIVATION_FUNCTIONS
from .gated import gated, geglu, swiglu
from .linear import linear
from .linear_cross_entropy import linear_cross_entropy
from .softmax import cross_entropy, log_softmax, logsumexp, softmax

globals().update(_ACTIVATION_FUNCTIONS)

__all__ = [*_ACTIVATION_FUNCTIONS, "gated", "swiglu", "geglu", "linear", "softmax",
           "log_softmax", "logsumexp", "cross_entropy", "linear_cross_entropy"]
