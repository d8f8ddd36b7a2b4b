"""backprop_ext: fast, exact, drop-in forward and backward kernels for PyTorch.

    import backprop_ext.functional as BF      # torch.nn.functional-shaped
    import backprop_ext.nn as bnn             # torch.nn-shaped Modules, and bnn.convert(model)
"""

import torch  # noqa: F401  (loads libtorch before our extension)

try:
    from . import _C  # noqa: F401  (registers torch.ops.backprop_ext.*)
except ImportError as e:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "backprop_ext: the compiled extension backprop_ext._C could not be loaded "
        f"({e}). Build it with `pip install --no-build-isolation -e .` (or "
        "`python setup.py build_ext --inplace`) using the same torch you import."
    ) from e

from . import checkpoint, functional, nn, ops, utils
from .ops import dtypes as _dtypes

__version__ = "0.1.0"
__all__ = ["checkpoint", "functional", "nn", "ops", "utils", "cuda_built"]


def cuda_built() -> bool:
    """True when the CUDA kernels were compiled into this build."""
    return _dtypes.CUDA_BUILT
