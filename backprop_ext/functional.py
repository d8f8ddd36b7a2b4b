"""torch.nn.functional-shaped entry points: same names, argument names and defaults."""

from .activation import gelu, leaky_relu, relu, sigmoid, silu, softplus, tanh
from .linear import linear
from .softmax import cross_entropy, log_softmax, logsumexp, softmax

__all__ = [
    "relu", "leaky_relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "linear",
    "softmax", "log_softmax", "logsumexp", "cross_entropy",
]
