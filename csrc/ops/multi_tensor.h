// The multi-tensor family's kernel stubs (see stub.h): csrc/ops/multi_tensor.cpp holds the ops,
// which check their arguments, lay the tensors out and call these; cpu/multi_tensor.cpp and
// cuda/multi_tensor.cu register the kernels. Math: multi_tensor_math.h.
//
// A kernel gets the call's tensors, all on one device, float64/float32/float16/bfloat16 mixed,
// each non-overlapping and dense (any permutation of dims, walked as the flat array it occupies;
// the op hands a contiguous copy of any other tensor and copies in-place results back), some
// possibly empty. Work is cut into chunks of kMultiTensorChunk elements of one tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/stub.h"
#include "math/multi_tensor_math.h"

namespace backprop_ext {

// Elements one chunk covers: the unit of work of one thread (CPU) or one block (CUDA), and of one
// norm partial. A multiple of every vector width, so chunks of an aligned tensor stay aligned.
constexpr int64_t kMultiTensorChunk = 65536;

inline int64_t num_chunks(int64_t numel) {
  return (numel + kMultiTensorChunk - 1) / kMultiTensorChunk;
}

// The p-norm of all tensors as one vector into `out` (0-d), or of each tensor into `out` (n,):
// float64 or float32, on the tensors' device; never read back to the host.
using multi_tensor_norm_fn = void (*)(const std::vector<at::Tensor>& tensors, NormKind kind,
                                      double p, at::Tensor& out);
// tensors *= clip_coefficient(total_norm, max_norm), total_norm a one-value float tensor on their
// device, read there.
using multi_tensor_scale_fn = void (*)(const std::vector<at::Tensor>& tensors,
                                       const at::Tensor& total_norm, double max_norm);
// tensors = clamp_value(tensors, lo, hi).
using multi_tensor_clamp_fn = void (*)(const std::vector<at::Tensor>& tensors, double lo,
                                       double hi);

BACKPROP_EXT_DECLARE_STUB(multi_tensor_norm_stub, multi_tensor_norm_fn);
BACKPROP_EXT_DECLARE_STUB(multi_tensor_scale_stub, multi_tensor_scale_fn);
BACKPROP_EXT_DECLARE_STUB(multi_tensor_clamp_stub, multi_tensor_clamp_fn);

}  // namespace backprop_ext
