// The softmax family's ops, for every device: argument checks, the (outer, D, inner) view,
// layout and allocation, then the device's kernel (softmax.h's stubs). Kernels: cpu/softmax.cpp,
// cuda/softmax.cu; math and edge values: softmax_math.h. Cross-entropy, built on the same row
// statistics, is its own family: ops/cross_entropy.cpp.
//
//   softmax_fwd(x, dim, log) -> y             softmax_bwd(grad_y, y, dim, log) -> grad_x
//   logsumexp_fwd(x, dim) -> r (keepdim)      logsumexp_bwd(grad_r, x, r, dim) -> grad_x
//
// Under autocast, softmax_fwd and logsumexp_fwd run in float32 on CUDA, as torch's softmax,
// log_softmax and logsumexp do.
#include <ATen/WrapDimUtils.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <vector>

#include "core/checks.h"
#include "core/op_handle.h"
#include "ops/softmax.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(softmax_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(softmax_bwd_stub);
BACKPROP_EXT_DEFINE_STUB(logsumexp_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(logsumexp_bwd_stub);

namespace {

// --- shapes

ReductionShape reduction_shape(const char* op, const at::Tensor& t, int64_t dim) {
  const int64_t ndim = t.dim();
  TORCH_CHECK(dim >= -std::max<int64_t>(ndim, 1) && dim < std::max<int64_t>(ndim, 1), op, ": dim ",
              dim, " is out of range for a tensor of ", ndim, " dimensions (shape ", t.sizes(),
              ")");
  ReductionShape s{ndim == 0 ? 0 : c10::maybe_wrap_dim(dim, ndim), 1, 1, 1};
  if (ndim == 0) return s;  // a 0-d tensor is one row of one element
  for (int64_t d = 0; d < s.dim; ++d) s.outer *= t.size(d);
  s.D = t.size(s.dim);
  for (int64_t d = s.dim + 1; d < ndim; ++d) s.inner *= t.size(d);
  return s;
}

// t's sizes with the reduced dim kept as 1.
std::vector<int64_t> keepdim_sizes(const at::Tensor& t, int64_t dim) {
  std::vector<int64_t> sizes(t.sizes().begin(), t.sizes().end());
  if (!sizes.empty()) sizes[dim] = 1;
  return sizes;
}

void check_keepdim_shape(const char* op, const char* arg, const at::Tensor& t,
                         const at::Tensor& self, int64_t dim) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(keepdim_sizes(self, dim)), op, ": expected ", arg,
              " of shape ", at::IntArrayRef(keepdim_sizes(self, dim)), " (self's with dim ", dim,
              " kept as 1), but got ", t.sizes());
}
// --- softmax / log_softmax

at::Tensor softmax_fwd(const at::Tensor& self, int64_t dim, bool log) {
  const char* op = log ? "log_softmax_fwd" : "softmax_fwd";
  check_float(op, "self", self);
  const ReductionShape s = reduction_shape(op, self, dim);
  const c10::OptionalDeviceGuard guard(device_of(self));
  const at::Tensor x = self.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() > 0) softmax_fwd_stub(x.device().type(), x, y, s, log);
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim,
                       bool log) {
  const char* op = log ? "log_softmax_bwd" : "softmax_bwd";
  check_float(op, "grad_output", grad_output);
  check_same(op, "grad_output", grad_output, "output", output);
  check_same_shape(op, "grad_output", grad_output, "output", output);
  const ReductionShape s = reduction_shape(op, output, dim);
  const c10::OptionalDeviceGuard guard(device_of(output));
  const at::Tensor g = grad_output.contiguous(), y = output.contiguous();
  at::Tensor gx = at::empty_like(y);
  if (y.numel() > 0) softmax_bwd_stub(y.device().type(), g, y, gx, s, log);
  return gx;
}

// --- logsumexp

at::Tensor logsumexp_fwd(const at::Tensor& self, int64_t dim) {
  check_float("logsumexp_fwd", "self", self);
  const ReductionShape s = reduction_shape("logsumexp_fwd", self, dim);
  const c10::OptionalDeviceGuard guard(device_of(self));
  const at::Tensor x = self.contiguous();
  at::Tensor out = at::empty(keepdim_sizes(x, s.dim), x.options());
  if (out.numel() > 0) logsumexp_fwd_stub(x.device().type(), x, out, s);
  return out;
}

at::Tensor logsumexp_bwd(const at::Tensor& grad, const at::Tensor& self, const at::Tensor& result,
                         int64_t dim) {
  const char* op = "logsumexp_bwd";
  check_float(op, "self", self);
  check_same(op, "self", self, "grad", grad);
  check_same(op, "self", self, "result", result);
  const ReductionShape s = reduction_shape(op, self, dim);
  check_keepdim_shape(op, "grad", grad, self, s.dim);
  check_keepdim_shape(op, "result", result, self, s.dim);
  const c10::OptionalDeviceGuard guard(device_of(self));
  const at::Tensor g = grad.contiguous(), x = self.contiguous(), r = result.contiguous();
  at::Tensor gx = at::empty_like(x);
  if (x.numel() > 0) logsumexp_bwd_stub(x.device().type(), g, x, r, gx, s);
  return gx;
}
// --- autocast: float32, as torch's own ops of the family

using LogsumexpFwd = at::Tensor(const at::Tensor&, int64_t);

template <c10::DeviceType kDevice>
at::Tensor softmax_fwd_autocast(const at::Tensor& self, int64_t dim, bool log) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  static const auto op = find_op<SoftmaxFwd>("backprop_ext::softmax_fwd");
  return op.call(at::autocast::cached_cast(at::kFloat, self, kDevice), dim, log);
}

template <c10::DeviceType kDevice>
at::Tensor logsumexp_fwd_autocast(const at::Tensor& self, int64_t dim) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  static const auto op = find_op<LogsumexpFwd>("backprop_ext::logsumexp_fwd");
  return op.call(at::autocast::cached_cast(at::kFloat, self, kDevice), dim);
}
void register_ops(torch::Library& m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("logsumexp_fwd", &logsumexp_fwd);
  m.impl("logsumexp_bwd", &logsumexp_bwd);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCUDA, m) {
  m.impl("softmax_fwd", &softmax_fwd_autocast<c10::DeviceType::CUDA>);
  m.impl("logsumexp_fwd", &logsumexp_fwd_autocast<c10::DeviceType::CUDA>);
}

}  // namespace backprop_ext
