// The multi-tensor family's ops (gradient clipping), for every device: argument checks, the
// tensors' layout, the result's allocation, then the device's kernel (multi_tensor.h's stubs).
// Kernels: cpu/multi_tensor.cpp, cuda/multi_tensor.cu; math: multi_tensor_math.h.
//
//   multi_tensor_norm(tensors, p) -> 0-d              ||all tensors as one vector||_p
//   multi_tensor_norm_per_tensor(tensors, p) -> (n,)  ||tensors[i]||_p
//   multi_tensor_scale_(tensors, total_norm, max_norm)  x *= min(1, max_norm / (norm + 1e-6))
//   multi_tensor_clamp_(tensors, lo, hi)                x = clamp(x, lo, hi)
//
// Every op takes a list of tensors that must all live on one device (the device of tensors[0]) and
// be float64, float32, float16 or bfloat16; dtypes may be mixed within a call. Norms come back in
// float64 when any tensor is float64, float32 otherwise, on the tensors' device.
#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <vector>

#include "core/checks.h"
#include "ops/multi_tensor.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(multi_tensor_norm_stub);
BACKPROP_EXT_DEFINE_STUB(multi_tensor_scale_stub);
BACKPROP_EXT_DEFINE_STUB(multi_tensor_clamp_stub);

namespace {

void check_tensor_list(const char* op, at::TensorList tensors) {
  TORCH_CHECK(!tensors.empty(), op, ": expected a non-empty list of tensors, but got an empty one");
  const c10::Device device = tensors[0].device();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK(t.defined(), op, ": expected tensors[", i, "] to be a tensor, but got None");
    TORCH_CHECK(t.device() == device, op,
                ": all tensors must be on one device, the device of "
                "tensors[0] (",
                device, "), but tensors[", i, "] is on ", t.device());
    TORCH_CHECK(t.layout() == at::kStrided, op, ": expected tensors[", i,
                "] to be a dense (strided) tensor, but got layout ", t.layout());
    TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": expected tensors[", i,
                "] to be a float64, float32, float16 or bfloat16 tensor, but got ",
                t.scalar_type());
  }
}

// The in-place ops write each element once through its own address; a tensor whose elements share
// memory (an expanded view) cannot be updated that way.
void check_writable(const char* op, at::TensorList tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(at::has_internal_overlap(tensors[i]) != at::MemOverlap::Yes, op, ": tensors[", i,
                "] has elements that share memory (e.g. an expanded tensor) "
                "and cannot be modified in place; pass a tensor that owns its elements");
  }
}

// float64 if any tensor is float64, else float32: the dtype norms are returned in.
c10::ScalarType norm_result_dtype(at::TensorList tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.scalar_type() == at::kDouble) return at::kDouble;
  }
  return at::kFloat;
}

// Each tensor's elements as one flat array the kernels can walk: itself when non-overlapping and
// dense, otherwise a contiguous copy (which the in-place ops copy back: see copy_back).
std::vector<at::Tensor> flat_views(at::TensorList tensors) {
  std::vector<at::Tensor> views;
  views.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    views.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
  }
  return views;
}

// Results computed on contiguous copies of non-dense tensors, written back (on CUDA, queued on
// the stream like everything else).
void copy_back(at::TensorList tensors, const std::vector<at::Tensor>& views) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!views[i].is_same(tensors[i])) tensors[i].copy_(views[i]);
  }
}

at::Tensor norm(const char* op, at::TensorList tensors, double p, bool per_tensor) {
  check_tensor_list(op, tensors);
  const NormKind kind = parse_norm_kind(op, p);
  const c10::OptionalDeviceGuard guard(device_of(tensors[0]));
  const auto views = flat_views(tensors);
  const auto options = tensors[0].options().dtype(norm_result_dtype(tensors));
  at::Tensor out = per_tensor ? at::empty({static_cast<int64_t>(tensors.size())}, options)
                              : at::empty({}, options);
  multi_tensor_norm_stub(tensors[0].device().type(), views, kind, p, out);
  return out;
}

at::Tensor multi_tensor_norm(at::TensorList tensors, double p) {
  return norm("multi_tensor_norm", tensors, p, false);
}

at::Tensor multi_tensor_norm_per_tensor(at::TensorList tensors, double p) {
  return norm("multi_tensor_norm_per_tensor", tensors, p, true);
}

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  const char* op = "multi_tensor_scale_";
  check_tensor_list(op, tensors);
  check_writable(op, tensors);
  TORCH_CHECK(total_norm.numel() == 1, op,
              ": expected total_norm to hold one value, but got a "
              "tensor of shape ",
              total_norm.sizes());
  check_float(op, "total_norm", total_norm);
  TORCH_CHECK(total_norm.device() == tensors[0].device(), op,
              ": expected total_norm on the "
              "tensors' device (",
              tensors[0].device(), "), but it is on ", total_norm.device());
  TORCH_CHECK(max_norm >= 0, op, ": expected max_norm >= 0, but got ", max_norm);
  const c10::OptionalDeviceGuard guard(device_of(tensors[0]));
  const auto views = flat_views(tensors);
  multi_tensor_scale_stub(tensors[0].device().type(), views, total_norm, max_norm);
  copy_back(tensors, views);
}

void multi_tensor_clamp_(at::TensorList tensors, double lo, double hi) {
  const char* op = "multi_tensor_clamp_";
  check_tensor_list(op, tensors);
  check_writable(op, tensors);
  TORCH_CHECK(lo <= hi, op, ": expected lo <= hi (and neither NaN), but got lo = ", lo,
              " and hi = ", hi);
  const c10::OptionalDeviceGuard guard(device_of(tensors[0]));
  const auto views = flat_views(tensors);
  multi_tensor_clamp_stub(tensors[0].device().type(), views, lo, hi);
  copy_back(tensors, views);
}

void register_ops(torch::Library& m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm);
  m.impl("multi_tensor_norm_per_tensor", &multi_tensor_norm_per_tensor);
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
  m.impl("multi_tensor_clamp_", &multi_tensor_clamp_);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

}  // namespace backprop_ext
