// The cross-entropy family's kernel stubs (see stub.h): csrc/ops/cross_entropy.cpp holds the ops,
// which check their arguments, lay tensors out and allocate, then call these;
// cpu/cross_entropy.cpp and cuda/cross_entropy.cu register the kernels. Math: softmax_math.h (the
// row statistics cross-entropy shares with softmax).
//
// Kernels get contiguous tensors, never empty ones. Cross-entropy's per-row tensors (nll, smooth,
// lse and their gradients) are in the opmath dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/stub.h"

namespace backprop_ext {

// Class-index cross-entropy over the N rows of (N, C) logits (N > 0): per row, nll = lse - x[t],
// smooth = sum_c w_c (lse - x_c) (when `smooth` is defined) and lse; zeros where t ==
// ignore_index. weight (C,) may be undefined (all ones). Targets index the rows: every kernel
// checks each one before reading with it (CPU: IndexError; CUDA: a device-side assert).
using cross_entropy_fwd_fn = void (*)(const at::Tensor& logits, const at::Tensor& target,
                                      const at::Tensor& weight, int64_t ignore_index,
                                      at::Tensor& nll, at::Tensor& smooth, at::Tensor& lse);
// grad = grad_nll (p - onehot(t)) + grad_smooth (p W - w), p = exp(x - lse), W = sum(w); zero on
// ignored rows; grad_smooth may be undefined. `grad` may be `logits` itself (each element is read
// before it is written).
using cross_entropy_bwd_fn = void (*)(const at::Tensor& logits, const at::Tensor& target,
                                      const at::Tensor& weight, const at::Tensor& lse,
                                      const at::Tensor& grad_nll, const at::Tensor& grad_smooth,
                                      int64_t ignore_index, at::Tensor& grad);

enum class Reduction : int8_t { kNone, kMean, kSum };

// The loss from the rows' terms: loss_i = (1 - eps) w_i nll_i + (eps / C) smooth_i, where
// w_i = weight[target_i] (1 without class weights) and 0 where target_i is ignore_index; `loss`
// gets the loss_i (kNone, shape (N,)), their sum, or their sum / total (kMean), and `total` (0-d)
// the sum of the w_i. nll, smooth (undefined without label smoothing), weight (undefined or (C,)),
// loss and total are in the opmath dtype; the targets were checked by the row kernel.
using cross_entropy_reduce_fn = void (*)(const at::Tensor& target, const at::Tensor& weight,
                                         const at::Tensor& nll, const at::Tensor& smooth,
                                         int64_t ignore_index, double eps, int64_t C,
                                         Reduction reduction, at::Tensor& loss, at::Tensor& total);

BACKPROP_EXT_DECLARE_STUB(cross_entropy_fwd_stub, cross_entropy_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(cross_entropy_bwd_stub, cross_entropy_bwd_fn);
BACKPROP_EXT_DECLARE_STUB(cross_entropy_reduce_stub, cross_entropy_reduce_fn);

}  // namespace backprop_ext
