// Entry points of csrc/cpu/activation_kernels.cpp, one per compiled ISA. Each runs serially over
// a contiguous chunk of n elements; the caller (activation.cpp) splits the work across threads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "math/activation_math.h"

namespace backprop_ext::cpu {

BACKPROP_EXT_DECLARE_ISA_KERNEL(activation_fwd_kernel,
                                void activation_fwd_kernel(c10::ScalarType dtype, const void* x,
                                                           void* y, int64_t n, Activation act,
                                                           double p0, double p1))

BACKPROP_EXT_DECLARE_ISA_KERNEL(activation_bwd_kernel,
                                void activation_bwd_kernel(c10::ScalarType dtype, const void* grad,
                                                           const void* saved, void* grad_input,
                                                           int64_t n, Activation act, double p0,
                                                           double p1))

}  // namespace backprop_ext::cpu
