// Shapes and argument checks of the softmax family, shared by the CPU and CUDA ops.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "checks.h"

namespace backprop_ext {

// A contiguous tensor seen as (outer, D, inner), reduced over D.
struct ReductionShape {
  int64_t dim, outer, D, inner;
};

inline ReductionShape reduction_shape(const char* op, const at::Tensor& t, int64_t dim) {
  const int64_t ndim = t.dim();
  TORCH_CHECK(dim >= -std::max<int64_t>(ndim, 1) && dim < std::max<int64_t>(ndim, 1), op,
              ": dim ", dim, " is out of range for a tensor of ", ndim, " dimensions (shape ",
              t.sizes(), ")");
  ReductionShape s{ndim == 0 ? 0 : c10::maybe_wrap_dim(dim, ndim), 1, 1, 1};
  if (ndim == 0) return s;  // a 0-d tensor is one row of one element
  for (int64_t d = 0; d < s.dim; ++d) s.outer *= t.size(d);
  s.D = t.size(s.dim);
  for (int64_t d = s.dim + 1; d < ndim; ++d) s.inner *= t.size(d);
  return s;
}

// t's sizes with the reduced dim kept as 1.
inline std::vector<int64_t> keepdim_sizes(const at::Tensor& t, int64_t dim) {
  std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
  if (!sizes.empty()) sizes[dim] = 1;
  return sizes;
}

inline void check_keepdim_shape(const char* op, const char* arg, const at::Tensor& t,
                                const at::Tensor& self, int64_t dim) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(keepdim_sizes(self, dim)), op, ": expected ", arg,
              " of shape ", at::IntArrayRef(keepdim_sizes(self, dim)), " (self's with dim ", dim,
              " kept as 1), but got ", t.sizes());
}

// logits (N, C) float; target (N,) int64; weight (C,) of logits' dtype.
inline void check_cross_entropy_args(const char* op, const at::Tensor& logits,
                                     const at::Tensor& target,
                                     const std::optional<at::Tensor>& weight) {
  check_float(op, "logits", logits);
  TORCH_CHECK(logits.dim() == 2, op, ": expected logits of shape (N, C), but got ",
              logits.sizes());
  TORCH_CHECK(logits.size(1) > 0, op, ": expected at least one class, but got logits of shape ",
              logits.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong, op,
              ": expected class-index target of dtype int64, but got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op,
              ": expected target of shape (", logits.size(0), ",) to match logits ",
              logits.sizes(), ", but got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op,
              ": expected target on the same device as logits (", logits.device(), "), but got ",
              target.device());
  if (weight.has_value()) {
    check_same(op, "logits", logits, "weight", *weight);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(1), op,
                ": expected weight of shape (", logits.size(1), ",) (one per class), but got ",
                weight->sizes());
  }
}

// A per-row tensor (N,) in logits' opmath dtype, on logits' device.
inline void check_cross_entropy_row_tensor(const char* op, const char* arg, const at::Tensor& t,
                                           const at::Tensor& logits) {
  const auto dtype = at::toOpMathType(logits.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), op, ": expected ", arg,
              " of shape (", logits.size(0), ",), but got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype && t.device() == logits.device(), op, ": expected ", arg,
              " of dtype ", dtype, " on ", logits.device(), ", but got ", t.scalar_type(), " on ",
              t.device());
}

// --- the checks of each backward op, shared by its CPU and CUDA kernels

inline ReductionShape check_softmax_bwd_args(const char* op, const at::Tensor& grad_output,
                                             const at::Tensor& output, int64_t dim) {
  check_float(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "output", output);
  check_same_shape(op, "grad_output", grad_output, "output", output);
  return reduction_shape(op, output, dim);
}

inline ReductionShape check_logsumexp_bwd_args(const at::Tensor& grad, const at::Tensor& self,
                                               const at::Tensor& result, int64_t dim) {
  const char* op = "logsumexp_bwd";
  check_float(op, "self", self);
  check_same(op, "self", self, "grad", grad);
  check_same(op, "self", self, "result", result);
  const ReductionShape s = reduction_shape(op, self, dim);
  check_keepdim_shape(op, "grad", grad, self, s.dim);
  check_keepdim_shape(op, "result", result, self, s.dim);
  return s;
}

inline void check_cross_entropy_bwd_args(const at::Tensor& logits, const at::Tensor& target,
                                         const std::optional<at::Tensor>& weight,
                                         const at::Tensor& lse, const at::Tensor& grad_nll,
                                         const std::optional<at::Tensor>& grad_smooth) {
  const char* op = "cross_entropy_bwd";
  check_cross_entropy_args(op, logits, target, weight);
  check_cross_entropy_row_tensor(op, "lse", lse, logits);
  check_cross_entropy_row_tensor(op, "grad_nll", grad_nll, logits);
  if (grad_smooth.has_value()) {
    check_cross_entropy_row_tensor(op, "grad_smooth", *grad_smooth, logits);
  }
}

}  // namespace backprop_ext
