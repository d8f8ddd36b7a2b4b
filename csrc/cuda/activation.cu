// Activation ops on CUDA: y = f(x) and dx = dy * f'(saved), one elementwise pass each, in opmath
// precision, 16-byte loads and stores (see common.cuh). The math is activation_math.h's.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../activation_math.h"
#include "../checks.h"
#include "../dispatch.h"
#include "../elementwise.h"
#include "common.cuh"

namespace backprop_ext::cuda {
namespace {

// --- launchers

void activation_fwd_into(const at::Tensor& x, at::Tensor& out, Activation act, double p0,
                         double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "activation_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_unary(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), x.numel(),
                   ActivationForward<A, T>{T(p0), T(p1)});
    });
  });
}

// --- ops

at::Tensor activation_fwd(const at::Tensor& self, c10::string_view activation, double p0,
                          double p1) {
  check_float("activation_fwd", "self", self);
  const Activation act = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(self.device());
  const at::Tensor x = as_flat(self);
  at::Tensor out = at::empty_like(x);
  activation_fwd_into(x, out, act, p0, p1);
  return out;
}

void activation_fwd_(at::Tensor& self, c10::string_view activation, double p0, double p1) {
  check_float("activation_fwd_", "self", self);
  const Activation act = parse_activation(activation);
  const c10::cuda::CUDAGuard guard(self.device());
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
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const auto [g, s] = as_flat(grad_output, saved);
  at::Tensor grad_input = at::empty_like(g);
  BACKPROP_EXT_DISPATCH_FLOATS(g.scalar_type(), "activation_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_binary(g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), g.numel(),
                    ActivationBackward<A, T>{T(p0), T(p1)});
    });
  });
  return grad_input;
}

}  // namespace

// --- registration

TORCH_LIBRARY_IMPL(backprop_ext, CUDA, m) {
  m.impl("activation_fwd", &activation_fwd);
  m.impl("activation_fwd_", &activation_fwd_);
  m.impl("activation_bwd", &activation_bwd);
}

}  // namespace backprop_ext::cuda
