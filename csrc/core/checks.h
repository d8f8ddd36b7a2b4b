// Argument checks shared by every op. Each message names the op, the argument, what was expected
// and what was found, so that a user reading it knows what to change without opening the source.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace backprop_ext {

inline bool is_supported_float(c10::ScalarType t) {
  return t == at::kDouble || t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

// `t` must be float64, float32, float16 or bfloat16.
inline void check_float(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": expected ", arg,
              " to be a float64, float32, float16 or bfloat16 tensor, but got ", t.scalar_type());
}

// `b` must share `a`'s device and dtype.
inline void check_same(const char* op, const char* arg_a, const at::Tensor& a, const char* arg_b,
                       const at::Tensor& b) {
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", arg_a, " and ", arg_b,
              " to be on the same device, but got ", arg_a, " on ", a.device(), " and ", arg_b,
              " on ", b.device());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", arg_a, " and ", arg_b,
              " to have the same dtype, but got ", a.scalar_type(), " and ", b.scalar_type());
}

inline void check_same_shape(const char* op, const char* arg_a, const at::Tensor& a,
                             const char* arg_b, const at::Tensor& b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": expected ", arg_a, " and ", arg_b,
              " to have the same shape, but got ", a.sizes(), " and ", b.sizes());
}

}  // namespace backprop_ext
