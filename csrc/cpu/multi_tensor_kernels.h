// Entry points of csrc/cpu/multi_tensor_kernels.cpp, one per compiled ISA. Each runs serially over
// one contiguous chunk of n elements; the caller (multi_tensor.cpp) plans the chunks across all
// tensors and splits them across threads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "math/multi_tensor_math.h"

namespace backprop_ext::cpu {

// The chunk's norm partial (see multi_tensor_math.h): (1, sum of |x|^p) where that sum is in
// range, else rescaled by max |x|; (max |x|, 1) for kLinf. Accumulated in float lanes for
// float32/float16/bfloat16, in double for float64.
BACKPROP_EXT_DECLARE_ISA_KERNEL(multi_tensor_norm_kernel,
                                NormPartial multi_tensor_norm_kernel(c10::ScalarType dtype,
                                                                     const void* x, int64_t n,
                                                                     NormKind kind, double p))

// x *= coef, in place, in opmath (coef is rounded to float first for the non-double types).
BACKPROP_EXT_DECLARE_ISA_KERNEL(multi_tensor_scale_kernel,
                                void multi_tensor_scale_kernel(c10::ScalarType dtype, void* x,
                                                               int64_t n, double coef))

// x = clamp(x, lo, hi), in place.
BACKPROP_EXT_DECLARE_ISA_KERNEL(multi_tensor_clamp_kernel,
                                void multi_tensor_clamp_kernel(c10::ScalarType dtype, void* x,
                                                               int64_t n, double lo, double hi))

}  // namespace backprop_ext::cpu
