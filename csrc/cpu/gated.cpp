// The gated family's CPU kernels: the thread split over the flat arrays. The vectorized loops
// are in gated_kernels.cpp, built once per ISA; the best build for this CPU is picked once
// (isa.h).
#include "ops/gated.h"
#include "cpu/gated_kernels.h"
#include "cpu/parallel.h"

namespace backprop_ext::cpu {
namespace {

void gated_fwd_cpu(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out, Activation act,
                   double p0, double p1) {
  const auto kernel = pick_gated_fwd_kernel();
  const auto dtype = gate.scalar_type();
  const int64_t size = gate.element_size();
  const char* gp = static_cast<const char*>(gate.const_data_ptr());
  const char* up_p = static_cast<const char*>(up.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  parallel_elements(gate.numel(), [&](int64_t begin, int64_t end) {
    const int64_t at = begin * size;
    kernel(dtype, gp + at, up_p + at, dst + at, end - begin, act, p0, p1);
  });
}

void gated_bwd_cpu(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up,
                   at::Tensor& grad_gate, at::Tensor& grad_up, Activation act, double p0,
                   double p1) {
  const auto kernel = pick_gated_bwd_kernel();
  const auto dtype = grad.scalar_type();
  const int64_t size = grad.element_size();
  const char* dp = static_cast<const char*>(grad.const_data_ptr());
  const char* gp = static_cast<const char*>(gate.const_data_ptr());
  const char* up_p = static_cast<const char*>(up.const_data_ptr());
  char* dgate = static_cast<char*>(grad_gate.mutable_data_ptr());
  char* dup = static_cast<char*>(grad_up.mutable_data_ptr());
  parallel_elements(grad.numel(), [&](int64_t begin, int64_t end) {
    const int64_t at = begin * size;
    kernel(dtype, dp + at, gp + at, up_p + at, dgate + at, dup + at, end - begin, act, p0, p1);
  });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(gated_fwd_stub, CPU, &gated_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(gated_bwd_stub, CPU, &gated_bwd_cpu);

}  // namespace backprop_ext::cpu
