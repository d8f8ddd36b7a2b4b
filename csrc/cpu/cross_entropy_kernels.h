// Entry points of csrc/cpu/cross_entropy_kernels.cpp, one per compiled ISA. Each call runs
// serially over `rows` rows of C logits; cross_entropy.cpp splits the rows across threads.
// Per-row results (nll, smooth, lse) are in the opmath type (float for the half types), as are
// the per-row gradients it takes.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"

namespace backprop_ext::cpu {

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
