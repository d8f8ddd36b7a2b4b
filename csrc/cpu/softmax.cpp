// Softmax-family ops on CPU: checks, the (outer, D, inner) view, and the thread split. The loops
// are in softmax_kernels.cpp, built once per ISA.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/WrapDimUtils.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "../softmax_shapes.h"
#include "softmax_kernels.h"

namespace backprop_ext::cpu {
namespace {

// Elements per thread below which splitting costs more than it saves (ATen's value).
constexpr int64_t kGrainSize = 32768;

// Runs f(begin, end) over [0, outer) in parallel, slices of `per_slice` elements each.
template <typename F>
void parallel_slices(int64_t outer, int64_t per_slice, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, per_slice));
  at::parallel_for(0, outer, grain, f);
}

const char* byte_ptr(const at::Tensor& t, int64_t elements) {
  return static_cast<const char*>(t.const_data_ptr()) + elements * t.element_size();
}
char* byte_ptr(at::Tensor& t, int64_t elements) {
  return static_cast<char*>(t.mutable_data_ptr()) + elements * t.element_size();
}

at::Tensor softmax_fwd(const at::Tensor& self, int64_t dim, bool log) {
  const char* op = log ? "log_softmax_fwd" : "softmax_fwd";
  check_float(op, "self", self);
  const ReductionShape s = reduction_shape(op, self, dim);
  const at::Tensor x = self.contiguous();
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const auto kernel = pick_softmax_fwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    const int64_t off = begin * s.D * s.inner;
    kernel(x.scalar_type(), byte_ptr(x, off), byte_ptr(y, off), end - begin, s.D, s.inner, log);
  });
  return y;
}

at::Tensor softmax_bwd(const at::Tensor& grad_output, const at::Tensor& output, int64_t dim,
                       bool log) {
  const ReductionShape s =
      check_softmax_bwd_args(log ? "log_softmax_bwd" : "softmax_bwd", grad_output, output, dim);
  const at::Tensor g = grad_output.contiguous(), y = output.contiguous();
  at::Tensor gx = at::empty_like(y);
  if (y.numel() == 0) return gx;
  const auto kernel = pick_softmax_bwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    const int64_t off = begin * s.D * s.inner;
    kernel(y.scalar_type(), byte_ptr(g, off), byte_ptr(y, off), byte_ptr(gx, off), end - begin,
           s.D, s.inner, log);
  });
  return gx;
}

at::Tensor logsumexp_fwd(const at::Tensor& self, int64_t dim) {
  check_float("logsumexp_fwd", "self", self);
  const ReductionShape s = reduction_shape("logsumexp_fwd", self, dim);
  const at::Tensor x = self.contiguous();
  at::Tensor out = at::empty(keepdim_sizes(x, s.dim), x.options());
  if (out.numel() == 0) return out;
  const auto kernel = pick_logsumexp_fwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    kernel(x.scalar_type(), byte_ptr(x, begin * s.D * s.inner), byte_ptr(out, begin * s.inner),
           end - begin, s.D, s.inner);
  });
  return out;
}

at::Tensor logsumexp_bwd(const at::Tensor& grad, const at::Tensor& self, const at::Tensor& result,
                         int64_t dim) {
  const ReductionShape s = check_logsumexp_bwd_args(grad, self, result, dim);
  const at::Tensor g = grad.contiguous(), x = self.contiguous(), r = result.contiguous();
  at::Tensor gx = at::empty_like(x);
  if (x.numel() == 0) return gx;
  const auto kernel = pick_logsumexp_bwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    kernel(x.scalar_type(), byte_ptr(g, begin * s.inner), byte_ptr(x, begin * s.D * s.inner),
           byte_ptr(r, begin * s.inner), byte_ptr(gx, begin * s.D * s.inner), end - begin, s.D,
           s.inner);
  });
  return gx;
}

// Raised when a kernel reports row `bad_row` of a slice starting at `first_row`: targets index
// the logits, so one outside [0, C) is refused before it is read (IndexError, as torch raises).
void check_target_row(const char* op, int64_t bad_row, int64_t first_row, const int64_t* target,
                      int64_t C, int64_t ignore_index) {
  if (bad_row < 0) return;
  const int64_t i = first_row + bad_row;
  TORCH_CHECK_INDEX(false, op, ": target ", target[i], " at position ", i,
                    " is out of bounds: expected a class index in [0, ", C,
                    ") or ignore_index (", ignore_index, ")");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fwd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, bool smoothing) {
  check_cross_entropy_args("cross_entropy_fwd", logits, target, weight);
  const int64_t N = logits.size(0), C = logits.size(1);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const auto opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor nll = at::empty({N}, opts), lse = at::empty({N}, opts);
  at::Tensor smooth = at::empty({smoothing ? N : 0}, opts);
  if (N == 0) return {nll, smooth, lse};
  const auto kernel = pick_cross_entropy_fwd_kernel();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  parallel_slices(N, C, [&](int64_t begin, int64_t end) {
    const int64_t bad_row =
        kernel(x.scalar_type(), byte_ptr(x, begin * C), tp + begin,
               w.defined() ? w.const_data_ptr() : nullptr, end - begin, C, ignore_index,
               byte_ptr(nll, begin), smoothing ? byte_ptr(smooth, begin) : nullptr,
               byte_ptr(lse, begin));
    check_target_row("cross_entropy_fwd", bad_row, begin, tp, C, ignore_index);
  });
  return {nll, smooth, lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& logits, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                             const at::Tensor& grad_nll, const std::optional<at::Tensor>& grad_smooth,
                             int64_t ignore_index) {
  check_cross_entropy_bwd_args(logits, target, weight, lse, grad_nll, grad_smooth);
  const int64_t N = logits.size(0), C = logits.size(1);
  const at::Tensor x = logits.contiguous(), t = target.contiguous(), l = lse.contiguous();
  const at::Tensor gn = grad_nll.contiguous();
  const at::Tensor gs = grad_smooth.has_value() ? grad_smooth->contiguous() : at::Tensor();
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  at::Tensor gx = at::empty_like(x);
  if (x.numel() == 0) return gx;
  const auto kernel = pick_cross_entropy_bwd_kernel();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  parallel_slices(N, C, [&](int64_t begin, int64_t end) {
    const int64_t bad_row =
        kernel(x.scalar_type(), byte_ptr(x, begin * C), tp + begin,
               w.defined() ? w.const_data_ptr() : nullptr, byte_ptr(l, begin),
               byte_ptr(gn, begin), gs.defined() ? byte_ptr(gs, begin) : nullptr, end - begin, C,
               ignore_index, byte_ptr(gx, begin * C));
    check_target_row("cross_entropy_bwd", bad_row, begin, tp, C, ignore_index);
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_bwd", &softmax_bwd);
  m.impl("logsumexp_fwd", &logsumexp_fwd);
  m.impl("logsumexp_bwd", &logsumexp_bwd);
  m.impl("cross_entropy_fwd", &cross_entropy_fwd);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd);
}

}  // namespace backprop_ext::cpu
