"""The one test harness, shared by the test suite and `python -m backprop_ext check`.

    compare.py  the tolerance rule and the ours/torch/float64 parity run
    cases.py    the case tables of every family, clipping's parity run, every op's samples
    isa.py      the per-ISA self-check of the CPU kernels
    fakes.py    CUDA autocast on fake tensors (dtypes without a GPU)
"""

from .cases import (
    ACTIVATION_CASES,
    CASES,
    CLIP_NORM_TYPES,
    CLIP_SIZES,
    CROSS_ENTROPY_CASES,
    EXTRA_ACTIVATION_PARAMS,
    LINEAR_CASES,
    LINEAR_CROSS_ENTROPY_CASES,
    REFERENCES,
    SOFTMAX_CASES,
    ActivationCase,
    CrossEntropyCase,
    LinearCase,
    LinearCrossEntropyCase,
    SoftmaxCase,
    activation_case,
    clip_parity,
    clip_value_matches,
    op_samples,
)
from .compare import (
    DTYPES,
    FLOOR,
    Comparison,
    assert_matches,
    assert_parity,
    compare,
    devices,
    dtype_name,
    jvp_of_gradient,
    parity,
)
from .fakes import fake_cuda_autocast
from .isa import ISAS, isa_self_check, isas_of_this_cpu, run_on_each_isa

__all__ = [
    "ACTIVATION_CASES", "CASES", "CLIP_NORM_TYPES", "CLIP_SIZES", "CROSS_ENTROPY_CASES",
    "EXTRA_ACTIVATION_PARAMS", "REFERENCES", "LINEAR_CASES", "LINEAR_CROSS_ENTROPY_CASES",
    "SOFTMAX_CASES",
    "ActivationCase", "CrossEntropyCase", "LinearCase", "LinearCrossEntropyCase", "SoftmaxCase",
    "activation_case", "clip_parity", "clip_value_matches", "op_samples", "DTYPES", "FLOOR",
    "Comparison", "assert_matches", "assert_parity", "compare", "devices", "dtype_name",
    "jvp_of_gradient", "parity", "fake_cuda_autocast", "ISAS", "isa_self_check",
    "isas_of_this_cpu", "run_on_each_isa",
]
