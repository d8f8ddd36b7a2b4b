// Entry points of csrc/cpu/linear_kernels.cpp, one per compiled ISA: the elementwise work around
// the GEMMs of a linear layer that BLAS cannot fuse. Each runs serially on its piece of a
// row-major (rows x cols) matrix; the caller (linear.cpp) does checks, layout and the thread split.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "cpu/isa.h"
#include "math/activation_math.h"

namespace backprop_ext::cpu {

// Widest column block bias_act_bwd_kernel takes: it keeps one accumulator per column on the stack
// (16 KiB in float). Tiles as wide as the rows they cut run about 1.5x faster than 512-column ones
// (whole rows stream; half rows defeat the prefetcher), hence the generous width.
constexpr int64_t kLinearMaxTileCols = 4096;

// Forward epilogue, one pass over the GEMM output z = x W^T (rows x cols, contiguous):
//   z <- z + bias (rounded to the dtype, as a GEMM with the bias folded in would store it)
//   y <- act(z)
// bias may be null. y == z computes in place (the pre-activation is not kept); otherwise the
// biased z is written back for backward and y is written separately.
BACKPROP_EXT_DECLARE_ISA_KERNEL(bias_act_fwd_kernel,
                                void bias_act_fwd_kernel(c10::ScalarType dtype, void* z, void* y,
                                                         const void* bias, int64_t rows,
                                                         int64_t cols, Activation act, double p0,
                                                         double p1))

// Backward epilogue, one pass over a (rows x cols) tile of grad_output with row stride ld:
//   grad_preact = grad_output * act'(saved)
//   partial[c]  = sum over the tile's rows of grad_preact[., c]   (in opmath; the bias gradient's
//                                                                 share of this tile)
// partial may be null (no bias gradient). cols <= kLinearMaxTileCols.
BACKPROP_EXT_DECLARE_ISA_KERNEL(bias_act_bwd_kernel,
                                void bias_act_bwd_kernel(c10::ScalarType dtype,
                                                         const void* grad_output, const void* saved,
                                                         void* grad_preact, void* partial,
                                                         int64_t rows, int64_t cols, int64_t ld,
                                                         Activation act, double p0, double p1))

}  // namespace backprop_ext::cpu
