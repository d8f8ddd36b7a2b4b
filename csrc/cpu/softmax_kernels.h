// Entry points of csrc/cpu/softmax_kernels.cpp, one per compiled ISA. Tensors are seen as
// (outer, D, inner) with the reduced dim of length D in the middle (inner == 1: the last dim).
// Each call runs serially over `outer` slices; softmax.cpp splits the work across threads.
// Per-row results of cross-entropy (nll, smooth, lse) are in the opmath type (float for the half
// types), as are the per-row gradients it takes.
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

// Class-index targets, rows of C logits. weight (C, logits' dtype) may be null. Ignored rows
// (target == ignore_index) get nll = smooth = 0. `smooth` may be null (no label smoothing).
// Both cross-entropy kernels check each row's target where they read it, before it indexes
// anything: they stop at the first row whose target is neither ignore_index nor in [0, C) and
// return that row (relative to `target`), or -1 when every target is valid.
BACKPROP_EXT_DECLARE_ISA_KERNEL(
    cross_entropy_fwd_kernel,
    int64_t cross_entropy_fwd_kernel(c10::ScalarType dtype, const void* logits,
                                     const int64_t* target, const void* weight, int64_t rows,
                                     int64_t C, int64_t ignore_index, void* nll, void* smooth,
                                     void* lse))

// grad_logits = grad_nll (p - onehot(target)) + grad_smooth (p W - w), p = exp(x - lse),
// W = sum(w); zero on ignored rows. grad_smooth may be null.
BACKPROP_EXT_DECLARE_ISA_KERNEL(
    cross_entropy_bwd_kernel,
    int64_t cross_entropy_bwd_kernel(c10::ScalarType dtype, const void* logits,
                                     const int64_t* target, const void* weight, const void* lse,
                                     const void* grad_nll, const void* grad_smooth, int64_t rows,
                                     int64_t C, int64_t ignore_index, void* grad_logits))

}  // namespace backprop_ext::cpu
