// The cross-entropy family's CPU kernels: the thread split over rows, the target check, and the
// reduction of the rows' losses. The row loops are in cross_entropy_kernels.cpp, built once per
// ISA; the ops around them are csrc/ops/cross_entropy.cpp's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cpu/cross_entropy_kernels.h"
#include "cpu/parallel.h"
#include "cpu/tensor_ptr.h"
#include "ops/cross_entropy.h"

namespace backprop_ext::cpu {
namespace {

// Raised when a kernel reports row `bad_row` of a slice starting at `first_row`: targets index
// the logits, so one outside [0, C) is refused before it is read (IndexError, as torch raises).
void check_target_row(const char* op, int64_t bad_row, int64_t first_row, const int64_t* target,
                      int64_t C, int64_t ignore_index) {
  if (bad_row < 0) return;
  const int64_t i = first_row + bad_row;
  TORCH_CHECK_INDEX(false, op, ": target ", target[i], " at position ", i,
                    " is out of bounds: expected a class index in [0, ", C, ") or ignore_index (",
                    ignore_index, ")");
}

void cross_entropy_fwd_cpu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& w,
                           int64_t ignore_index, at::Tensor& nll, at::Tensor& smooth,
                           at::Tensor& lse) {
  const int64_t N = x.size(0), C = x.size(1);
  const auto kernel = pick_cross_entropy_fwd_kernel();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  const void* wp = w.defined() ? w.const_data_ptr() : nullptr;
  parallel_slices(N, C, [&](int64_t begin, int64_t end) {
    const int64_t bad_row = kernel(x.scalar_type(), byte_ptr(x, begin * C), tp + begin, wp,
                                   end - begin, C, ignore_index, byte_ptr(nll, begin),
                                   byte_ptr_or_null(smooth, begin), byte_ptr(lse, begin));
    check_target_row("cross_entropy_fwd", bad_row, begin, tp, C, ignore_index);
  });
}

void cross_entropy_bwd_cpu(const at::Tensor& x, const at::Tensor& t, const at::Tensor& w,
                           const at::Tensor& lse, const at::Tensor& grad_nll,
                           const at::Tensor& grad_smooth, int64_t ignore_index, at::Tensor& grad) {
  const int64_t N = x.size(0), C = x.size(1);
  const auto kernel = pick_cross_entropy_bwd_kernel();
  const int64_t* tp = t.const_data_ptr<int64_t>();
  const void* wp = w.defined() ? w.const_data_ptr() : nullptr;
  parallel_slices(N, C, [&](int64_t begin, int64_t end) {
    const int64_t bad_row =
        kernel(x.scalar_type(), byte_ptr(x, begin * C), tp + begin, wp, byte_ptr(lse, begin),
               byte_ptr(grad_nll, begin), byte_ptr_or_null(grad_smooth, begin), end - begin, C,
               ignore_index, byte_ptr(grad, begin * C));
    check_target_row("cross_entropy_bwd", bad_row, begin, tp, C, ignore_index);
  });
}

// One pass over the N rows' values (the row kernel read N x C), serial and in double: the same
// sum whatever the thread count.
void cross_entropy_reduce_cpu(const at::Tensor& target, const at::Tensor& weight,
                              const at::Tensor& nll, const at::Tensor& smooth, int64_t ignore_index,
                              double eps, int64_t C, Reduction reduction, at::Tensor& loss,
                              at::Tensor& total) {
  AT_DISPATCH_FLOATING_TYPES(nll.scalar_type(), "cross_entropy_reduce", [&] {
    const int64_t N = nll.size(0);
    const int64_t* t = target.const_data_ptr<int64_t>();
    const scalar_t* l = nll.const_data_ptr<scalar_t>();
    const scalar_t* s = smooth.defined() ? smooth.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* w = weight.defined() ? weight.const_data_ptr<scalar_t>() : nullptr;
    const bool per_row = reduction == Reduction::kNone;
    scalar_t* rows = per_row ? loss.mutable_data_ptr<scalar_t>() : nullptr;  // null when N == 0
    const double nll_scale = 1.0 - eps, smooth_scale = eps / static_cast<double>(C);
    double sum_nll = 0, sum_smooth = 0, total_weight = 0;
    for (int64_t i = 0; i < N; ++i) {
      const double w_i = t[i] == ignore_index ? 0.0 : (w ? static_cast<double>(w[t[i]]) : 1.0);
      const double smooth_i = s ? static_cast<double>(s[i]) : 0.0;
      if (per_row) {
        rows[i] = static_cast<scalar_t>(nll_scale * w_i * static_cast<double>(l[i]) +
                                        smooth_scale * smooth_i);
      } else {
        sum_nll += w_i * static_cast<double>(l[i]);
        sum_smooth += smooth_i;
      }
      total_weight += w_i;
    }
    if (!per_row) {
      // A mean divides both terms by the total weight of the counted targets, as torch: a zero
      // total gives torch's NaN (a smoothing term over it alone would give inf).
      const double d = reduction == Reduction::kMean ? total_weight : 1.0;
      *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(
          nll_scale * (sum_nll / d) + (s ? smooth_scale * (sum_smooth / d) : 0.0));
    }
    *total.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total_weight);
  });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_fwd_stub, CPU, &cross_entropy_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_bwd_stub, CPU, &cross_entropy_bwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_reduce_stub, CPU, &cross_entropy_reduce_cpu);

}  // namespace backprop_ext::cpu
