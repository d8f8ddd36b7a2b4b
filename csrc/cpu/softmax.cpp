// The softmax family's CPU kernels: the thread split over (outer, D, inner) slices. The loops are
// in softmax_kernels.cpp, built once per ISA; the ops around them are csrc/ops/softmax.cpp's.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "cpu/parallel.h"
#include "cpu/softmax_kernels.h"
#include "cpu/tensor_ptr.h"
#include "ops/softmax.h"

namespace backprop_ext::cpu {
namespace {

void softmax_fwd_cpu(const at::Tensor& x, at::Tensor& y, const ReductionShape& s, bool log) {
  const auto kernel = pick_softmax_fwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    const int64_t off = begin * s.D * s.inner;
    kernel(x.scalar_type(), byte_ptr(x, off), byte_ptr(y, off), end - begin, s.D, s.inner, log);
  });
}

void softmax_bwd_cpu(const at::Tensor& g, const at::Tensor& y, at::Tensor& gx,
                     const ReductionShape& s, bool log) {
  const auto kernel = pick_softmax_bwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    const int64_t off = begin * s.D * s.inner;
    kernel(y.scalar_type(), byte_ptr(g, off), byte_ptr(y, off), byte_ptr(gx, off), end - begin, s.D,
           s.inner, log);
  });
}

void logsumexp_fwd_cpu(const at::Tensor& x, at::Tensor& out, const ReductionShape& s) {
  const auto kernel = pick_logsumexp_fwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    kernel(x.scalar_type(), byte_ptr(x, begin * s.D * s.inner), byte_ptr(out, begin * s.inner),
           end - begin, s.D, s.inner);
  });
}

void logsumexp_bwd_cpu(const at::Tensor& g, const at::Tensor& x, const at::Tensor& r,
                       at::Tensor& gx, const ReductionShape& s) {
  const auto kernel = pick_logsumexp_bwd_kernel();
  parallel_slices(s.outer, s.D * s.inner, [&](int64_t begin, int64_t end) {
    kernel(x.scalar_type(), byte_ptr(g, begin * s.inner), byte_ptr(x, begin * s.D * s.inner),
           byte_ptr(r, begin * s.inner), byte_ptr(gx, begin * s.D * s.inner), end - begin, s.D,
           s.inner);
  });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(softmax_fwd_stub, CPU, &softmax_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(softmax_bwd_stub, CPU, &softmax_bwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_fwd_stub, CPU, &logsumexp_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_bwd_stub, CPU, &logsumexp_bwd_cpu);

}  // namespace backprop_ext::cpu
