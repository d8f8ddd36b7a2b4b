// Pointers into a tensor's data at an element offset: where a thread's slice of rows begins, for
// the CPU kernels' type-erased entry points (the *_kernels.h files take void pointers).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace backprop_ext::cpu {

inline const char* byte_ptr(const at::Tensor& t, int64_t elements) {
  return static_cast<const char*>(t.const_data_ptr()) + elements * t.element_size();
}
inline char* byte_ptr(at::Tensor& t, int64_t elements) {
  return static_cast<char*>(t.mutable_data_ptr()) + elements * t.element_size();
}
inline char* byte_ptr_or_null(at::Tensor& t, int64_t elements) {
  return t.defined() ? byte_ptr(t, elements) : nullptr;
}
inline const char* byte_ptr_or_null(const at::Tensor& t, int64_t elements) {
  return t.defined() ? byte_ptr(t, elements) : nullptr;
}

}  // namespace backprop_ext::cpu
