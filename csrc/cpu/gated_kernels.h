// Entry points of csrc/cpu/gated_kernels.cpp, one per compiled ISA. Each runs serially over a
// contiguous chunk of n elements; the caller (gated.cpp) splits the work across threads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "math/activation_math.h"

namespace backprop_ext::cpu {

BACKPROP_EXT_DECLARE_ISA_KERNEL(gated_fwd_kernel,
                                void gated_fwd_kernel(c10::ScalarType dtype, const void* gate,
                                                      const void* up, void* out, int64_t n,
                                                      Activation act, double p0, double p1))

BACKPROP_EXT_DECLARE_ISA_KERNEL(gated_bwd_kernel,
                                void gated_bwd_kernel(c10::ScalarType dtype, const void* grad,
                                                      const void* gate, const void* up,
                                                      void* grad_gate, void* grad_up, int64_t n,
                                                      Activation act, double p0, double p1))

}  // namespace backprop_ext::cpu
