// The softmax family's ops, for every device: argument checks, the (outer, D, inner) view,
// layout and allocation, then the device's kernel (softmax.h's stubs). Kernels: cpu/softmax.cpp,
// cuda/softmax.cu; math and edge values: softmax_math.h.
//
//   softmax_fwd(x, dim, log) -> y             softmax_bwd(grad_y, y, dim, log) -> grad_x
//   logsumexp_fwd(x, dim) -> r (keepdim)      logsumexp_bwd(grad_r, x, r, dim) -> grad_x
//   cross_entropy_fwd(logits (N, C), target (N,), weight, ignore_index, smoothing)
//       -> nll (N,), smooth (N,) or (0,), lse (N,)          [opmath dtype]
//   cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index) -> grad
//   cross_entropy_bwd_out(..., out)                          the same, written into `out`
#include <ATen/OpMathType.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"
#include "softmax.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(softmax_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(softmax_bwd_stub);
BACKPROP_EXT_DEFINE_STUB(logsumexp_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(logsumexp_bwd_stub);
BACKPROP_EXT_DEFINE_STUB(cross_entropy_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(cross_entropy_bwd_stub);

namespace {

// --- shapes and checks

ReductionShape reduction_shape(const char* op, const at::Tensor& t, int64_t dim) {
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

// logits (N, C) float; target (N,) int64; weight (C,) of logits' dtype.
void check_cross_entropy_args(const char* op, const at::Tensor& logits, const at::Tensor& target,
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
void check_row_tensor(const char* op, const char* arg, const at::Tensor& t,
                      const at::Tensor& logits) {
  const auto dtype = at::toOpMathType(logits.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), op, ": expected ", arg,
              " of shape (", logits.size(0), ",), but got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype && t.device() == logits.device(), op, ": expected ", arg,
              " of dtype ", dtype, " on ", logits.device(), ", but got ", t.scalar_type(), " on ",
              t.device());
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
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

// --- cross-entropy

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fwd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, bool smoothing) {
  check_cross_entropy_args("cross_entropy_fwd", logits, target, weight);
  const c10::OptionalDeviceGuard guard(device_of(logits));
  const int64_t N = logits.size(0);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const auto opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor nll = at::empty({N}, opts), lse = at::empty({N}, opts);
  at::Tensor smooth = at::empty({smoothing ? N : 0}, opts);
  at::Tensor smooth_out = smoothing ? smooth : at::Tensor();
  if (N > 0) {
    cross_entropy_fwd_stub(x.device().type(), x, t, w, ignore_index, nll, smooth_out, lse);
  }
  return {nll, smooth, lse};
}

void cross_entropy_bwd_out(const at::Tensor& logits, const at::Tensor& target,
                           const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                           const at::Tensor& grad_nll, const std::optional<at::Tensor>& grad_smooth,
                           int64_t ignore_index, at::Tensor& out) {
  const char* op = "cross_entropy_bwd";
  check_cross_entropy_args(op, logits, target, weight);
  check_row_tensor(op, "lse", lse, logits);
  check_row_tensor(op, "grad_nll", grad_nll, logits);
  if (grad_smooth.has_value()) check_row_tensor(op, "grad_smooth", *grad_smooth, logits);
  check_same(op, "logits", logits, "out", out);
  check_same_shape(op, "logits", logits, "out", out);
  TORCH_CHECK(out.is_contiguous(), op, ": expected a contiguous out (its rows are written in "
              "place), but got strides ", out.strides());
  const c10::OptionalDeviceGuard guard(device_of(logits));
  if (out.numel() == 0) return;
  // out may be the logits themselves: each element is read before it is written. Another
  // tensor sharing memory with them is not supported.
  const at::Tensor x = out.is_same(logits) ? logits : logits.contiguous();
  cross_entropy_bwd_stub(x.device().type(), x, target.contiguous(),
                         contiguous_or_undefined(weight), lse.contiguous(), grad_nll.contiguous(),
                         contiguous_or_undefined(grad_smooth), ignore_index, out);
}

at::Tensor cross_entropy_bwd(const at::Tensor& logits, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                             const at::Tensor& grad_nll,
                             const std::optional<at::Tensor>& grad_smooth, int64_t ignore_index) {
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  cross_entropy_bwd_out(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index, out);
  return out;
}

void register_ops(torch::Library& m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("logsumexp_fwd", &logsumexp_fwd);
  m.impl("logsumexp_bwd", &logsumexp_bwd);
  m.impl("cross_entropy_fwd", &cross_entropy_fwd);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd);
  m.impl("cross_entropy_bwd_out", &cross_entropy_bwd_out);
}

}  // namespace

TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) { register_ops(m); }
#ifdef BACKPROP_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(backprop_ext, CUDA, m) { register_ops(m); }
#endif

}  // namespace backprop_ext
