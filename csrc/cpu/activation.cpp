// Activation ops on CPU: argument checks, layout, and the thread split. The vectorized loops are
// in activation_kernels.cpp, built once per ISA; the best build for this CPU is picked once.
#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../activation_math.h"
#include "../checks.h"
#include "../elementwise.h"
#include "activation_kernels.h"

namespace backprop_ext::cpu {
namespace {

// Elementwise work per thread below which splitting costs more than it saves (ATen's value).
constexpr int64_t kGrainSize = 32768;

void activation_fwd_into(const at::Tensor& x, at::Tensor& out, Activation act, double p0,
                         double p1) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const auto kernel = pick_activation_fwd_kernel();
  const auto dtype = x.scalar_type();
  const int64_t size = x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
    kernel(dtype, src + begin * size, dst + begin * size, end - begin, act, p0, p1);
  });
}

at::Tensor activation_fwd(const at::Tensor& self, c10::string_view activation, double p0,
                          double p1) {
  check_float("activation_fwd", "self", self);
  const Activation act = parse_activation(activation);
  const at::Tensor x = as_flat(self);
  at::Tensor out = at::empty_like(x);
  activation_fwd_into(x, out, act, p0, p1);
  return out;
}

void activation_fwd_(at::Tensor& self, c10::string_view activation, double p0, double p1) {
  check_float("activation_fwd_", "self", self);
  const Activation act = parse_activation(activation);
  if (self.is_non_overlapping_and_dense()) {
    activation_fwd_into(self, self, act, p0, p1);  // elementwise: reading and writing alias safely
  } else {
    self.copy_(activation_fwd(self, activation, p0, p1));
  }
}

at::Tensor activation_bwd(const at::Tensor& grad_output, const at::Tensor& saved,
                          c10::string_view activation, double p0, double p1) {
  check_float("activation_bwd", "grad_output", grad_output);
  check_same("activation_bwd", "grad_output", grad_output, "saved", saved);
  check_same_shape("activation_bwd", "grad_output", grad_output, "saved", saved);
  const Activation act = parse_activation(activation);
  const auto [g, s] = as_flat(grad_output, saved);
  at::Tensor grad_input = at::empty_like(g);
  const int64_t n = g.numel();
  if (n == 0) return grad_input;
  const auto kernel = pick_activation_bwd_kernel();
  const auto dtype = g.scalar_type();
  const int64_t size = g.element_size();
  const char* gp = static_cast<const char*>(g.const_data_ptr());
  const char* sp = static_cast<const char*>(s.const_data_ptr());
  char* dst = static_cast<char*>(grad_input.mutable_data_ptr());
  at::parallel_for(0, n, kGrainSize, [&](int64_t begin, int64_t end) {
    kernel(dtype, gp + begin * size, sp + begin * size, dst + begin * size, end - begin, act, p0,
           p1);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {
  m.impl("activation_fwd", &activation_fwd);
  m.impl("activation_fwd_", &activation_fwd_);
  m.impl("activation_bwd", &activation_bwd);
}

}  // namespace backprop_ext::cpu
