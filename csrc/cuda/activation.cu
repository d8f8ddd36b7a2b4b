// The activation family's CUDA kernels: y = f(x) and dx = dy * f'(saved), one elementwise pass
// each in opmath precision, 16-byte loads and stores (common.cuh's launchers). The math is
// activation_math.h's; the ops around them are csrc/ops/activation.cpp's.
#include <ATen/core/Tensor.h>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "ops/activation.h"

namespace backprop_ext::cuda {
namespace {

void activation_fwd_cuda(const at::Tensor& x, at::Tensor& out, Activation act, double p0,
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

void activation_bwd_cuda(const at::Tensor& grad_output, const at::Tensor& saved,
                         at::Tensor& grad_input, Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(grad_output.scalar_type(), "activation_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_binary(grad_output.const_data_ptr<scalar_t>(), saved.const_data_ptr<scalar_t>(),
                    grad_input.mutable_data_ptr<scalar_t>(), grad_output.numel(),
                    ActivationBackward<A, T>{T(p0), T(p1)});
    });
  });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(activation_fwd_stub, CUDA, &activation_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(activation_bwd_stub, CUDA, &activation_bwd_cuda);

}  // namespace backprop_ext::cuda
