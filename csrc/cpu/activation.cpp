// The activation family's CPU kernels: the thread split over the flat arrays. The vectorized
// loops are in activation_kernels.cpp, built once per ISA; the best build for this CPU is picked
// once (isa.h).
#include "ops/activation.h"
#include "cpu/activation_kernels.h"
#include "cpu/parallel.h"

namespace backprop_ext::cpu {
namespace {

void activation_fwd_cpu(const at::Tensor& x, at::Tensor& out, Activation act, double p0,
                        double p1) {
  const auto kernel = pick_activation_fwd_kernel();
  const auto dtype = x.scalar_type();
  const int64_t size = x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  parallel_elements(x.numel(), [&](int64_t begin, int64_t end) {
    kernel(dtype, src + begin * size, dst + begin * size, end - begin, act, p0, p1);
  });
}

void activation_bwd_cpu(const at::Tensor& grad_output, const at::Tensor& saved,
                        at::Tensor& grad_input, Activation act, double p0, double p1) {
  const auto kernel = pick_activation_bwd_kernel();
  const auto dtype = grad_output.scalar_type();
  const int64_t size = grad_output.element_size();
  const char* gp = static_cast<const char*>(grad_output.const_data_ptr());
  const char* sp = static_cast<const char*>(saved.const_data_ptr());
  char* dst = static_cast<char*>(grad_input.mutable_data_ptr());
  parallel_elements(grad_output.numel(), [&](int64_t begin, int64_t end) {
    kernel(dtype, gp + begin * size, sp + begin * size, dst + begin * size, end - begin, act, p0,
           p1);
  });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(activation_fwd_stub, CPU, &activation_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(activation_bwd_stub, CPU, &activation_bwd_cpu);

}  // namespace backprop_ext::cpu
