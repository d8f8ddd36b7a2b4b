// Layout rule of the elementwise ops, shared by the CPU and CUDA kernels and mirrored by the
// fake kernels in backprop_ext/_layout.py: an operand that is non-overlapping and dense (any
// permutation of dims, e.g. a transpose or channels-last) is walked as the flat array it occupies
// and the output takes its strides, as torch's own elementwise ops do; anything else (slices,
// broadcasts) is made contiguous once. Several operands share a layout only if their strides match.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <utility>

namespace backprop_ext {

inline at::Tensor as_flat(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

inline std::pair<at::Tensor, at::Tensor> as_flat(const at::Tensor& a, const at::Tensor& b) {
  if (a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense() &&
      a.strides() == b.strides()) {
    return {a, b};
  }
  return {a.contiguous(), b.contiguous()};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> as_flat(const at::Tensor& a,
                                                              const at::Tensor& b,
                                                              const at::Tensor& c) {
  if (a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense() &&
      c.is_non_overlapping_and_dense() && a.strides() == b.strides() &&
      a.strides() == c.strides()) {
    return {a, b, c};
  }
  return {a.contiguous(), b.contiguous(), c.contiguous()};
}

// One value broadcast over all of t's elements (every dimension of size > 1 has stride 0): the
// gradient sum() and mean() send back.
inline bool is_broadcast_value(const at::Tensor& t) {
  if (t.numel() <= 1) return false;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) != 0) return false;
  }
  return true;
}

}  // namespace backprop_ext
