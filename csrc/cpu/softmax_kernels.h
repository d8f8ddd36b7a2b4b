// Entry points of csrc/cpu/softmax_kernels.cpp, one per compiled ISA. Tensors are seen as
// (outer, D, inner) with the reduced dim of length D in the middle (inner == 1: the last dim).
// Each call runs serially over `outer` slices; softmax.cpp splits the work across threads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace backprop_ext::cpu {

BACKPROP_EXT_DECLARE_ISA_KERNEL(softmax_fwd_kernel,
                                void softmax_fwd_kernel(c10::ScalarType dtype, const void* x,
                                                        void* y, int64_t outer, int64_t D,
                                                        int64_t inner, bool log))

BACKPROP_EXT_DECLARE_ISA_KERNEL(softmax_bwd_kernel,
                                void softmax_bwd_kernel(c10::ScalarType dtype, const void* grad,
                                                        const void* y, void* grad_x, int64_t outer,
                                                        int64_t D, int64_t inner, bool log))

BACKPROP_EXT_DECLARE_ISA_KERNEL(logsumexp_fwd_kernel,
                                void logsumexp_fwd_kernel(c10::ScalarType dtype, const void* x,
                                                          void* out, int64_t outer, int64_t D,
                                                          int64_t inner))

BACKPROP_EXT_DECLARE_ISA_KERNEL(logsumexp_bwd_kernel,
                                void logsumexp_bwd_kernel(c10::ScalarType dtype, const void* grad,
                                                          const void* x, const void* result,
                                                          void* grad_x, int64_t outer, int64_t D,
                                                          int64_t inner))

}  // namespace backprop_ext::cpu
