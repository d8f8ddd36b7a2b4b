// Argument checks and layout of the multi-tensor ops, shared by the CPU and CUDA implementations.
//
// Every op takes a list of tensors that must all live on one device (the device of tensors[0]) and
// be float64, float32, float16 or bfloat16; dtypes may be mixed within a call. Kernels walk each
// tensor as the flat array it occupies when it is non-overlapping and dense (any permutation of
// dims); any other tensor is processed through a contiguous copy, which the in-place ops copy back.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

#include "checks.h"

namespace backprop_ext {

// Elements one chunk covers: the unit of work of one thread (CPU) or one block (CUDA), and of one
// norm partial. A multiple of every vector width, so chunks of an aligned tensor stay aligned.
constexpr int64_t kMultiTensorChunk = 65536;

inline int64_t num_chunks(int64_t numel) {
  return (numel + kMultiTensorChunk - 1) / kMultiTensorChunk;
}

inline void check_tensor_list(const char* op, at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), op, ": expected a non-empty list of tensors, but got an empty one");
  const c10::Device device = tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), op, ": expected tensors[", i, "] to be a tensor, but got None");
    TORCH_CHECK(t.device() == device, op, ": all tensors must be on one device, the device of "
                "tensors[0] (", device, "), but tensors[", i, "] is on ", t.device());
    TORCH_CHECK(t.layout() == at::kStrided, op, ": expected tensors[", i,
                "] to be a dense (strided) tensor, but got layout ", t.layout());
    TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": expected tensors[", i,
                "] to be a float64, float32, float16 or bfloat16 tensor, but got ",
                t.scalar_type());
  }
}

// The in-place ops write each element once through its own address; a tensor whose elements share
// memory (an expanded view) cannot be updated that way.
inline void check_writable(const char* op, at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(at::has_internal_overlap(tensors[i]) != at::MemOverlap::Yes, op,
                ": tensors[", i, "] has elements that share memory (e.g. an expanded tensor) "
                "and cannot be modified in place; pass a tensor that owns its elements");
  }
}

// multi_tensor_scale_'s arguments, checked alike on every device.
inline void check_scale_args(at::TensorList tensors, const at::Tensor& total_norm,
                             double max_norm) {
  check_tensor_list("multi_tensor_scale_", tensors);
  check_writable("multi_tensor_scale_", tensors);
  TORCH_CHECK(total_norm.numel() == 1, "multi_tensor_scale_: expected total_norm to hold one "
              "value, but got a tensor of shape ", total_norm.sizes());
  check_float("multi_tensor_scale_", "total_norm", total_norm);
  TORCH_CHECK(total_norm.device() == tensors[0].device(), "multi_tensor_scale_: expected "
              "total_norm on the tensors' device (", tensors[0].device(), "), but it is on ",
              total_norm.device());
  TORCH_CHECK(max_norm >= 0, "multi_tensor_scale_: expected max_norm >= 0, but got ", max_norm);
}

// float64 if any tensor is float64, else float32: the dtype norms are returned in.
inline c10::ScalarType norm_result_dtype(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

// A tensor's elements as one flat array the kernels can walk: itself when non-overlapping and
// dense, otherwise a contiguous copy (flagged, so that in-place ops copy the result back).
struct FlatView {
  at::Tensor flat;
  bool is_copy;
};

inline FlatView flat_view(const at::Tensor& t) {
  if (t.is_non_overlapping_and_dense()) return {t, false};
  return {t.contiguous(), true};
}

}  // namespace backprop_ext
