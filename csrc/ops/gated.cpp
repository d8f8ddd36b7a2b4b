// The gated family's ops, for every device: checks, layout and allocation, then the device's
// kernel (gated.h's stubs). Math: gated.h over activation_math.h; kernels: cpu/gated.cpp,
// cuda/gated.cu.
//
//   gated_fwd(gate, up, name, p0, p1) -> y                    y = f(gate) * up
//   gated_bwd(grad, gate, up, name, p0, p1) -> (grad_gate, grad_up)
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <tuple>

#include "core/checks.h"
#include "core/elementwise.h"
#include "ops/gated.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(gated_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(gated_bwd_stub);

namespace {

at::Tensor gated_fwd(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation,
                     double p0, double p1) {
  check_float("gated_fwd", "gate", gate);
  check_same("gated_fwd", "gate", gate, "up", up);
  check_same_shape("gated_fwd", "gate", gate, "up", up);
  const Activation act = activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(gate));
  const auto [g, u] = as_flat(gate, up);
  at::Tensor out = at::empty_like(g);
  if (g.numel() > 0) gated_fwd_stub(g.device().type(), g, u, out, act, p0, p1);
  return out;
}

std::tuple<at::Tensor, at::Tensor> gated_bwd(const at::Tensor& grad, const at::Tensor& gate,
                                             const at::Tensor& up, c10::string_view activation,
                                             double p0, double p1) {
  check_float("gated_bwd", "grad", grad);
  check_same("gated_bwd", "grad", grad, "gate", gate);
  check_same("gated_bwd", "grad", grad, "up", up);
  check_same_shape("gated_bwd", "grad", grad, "gate", gate);
  check_same_shape("gated_bwd", "grad", grad, "up", up);
  const Activation act = activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(grad));
  const auto [d, g, u] = as_flat(grad, gate, up);
  at::Tensor grad_gate = at::empty_like(d);
  at::Tensor grad_up = at::empty_like(d);
  if (d.numel() > 0) {
    gated_bwd_stub(d.device().type(), d, g, u, grad_gate, grad_up, act, p0, p1);
  }
  return {grad_gate, grad_up};
}

// Under CUDA autocast, as torch's f(gate) * up: where torch runs f in float32
// (cuda_autocast_in_float32), f's result is float32 and the product promotes to float32, so both
// inputs are cast; otherwise neither (f and the product run in the inputs' dtype).
at::Tensor gated_fwd_autocast_cuda(const at::Tensor& gate, const at::Tensor& up,
                                   c10::string_view activation, double p0, double p1) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("backprop_ext::gated_fwd", "")
                             .typed<decltype(gated_fwd)>();
  if (!cuda_autocast_in_float32(activation_from_name(activation))) {
    return op.call(gate, up, activation, p0, p1);
  }
  constexpr auto kCuda = c10::DeviceType::CUDA;
  return op.call(at::autocast::cached_cast(at::kFloat, gate, kCuda),
                 at::autocast::cached_cast(at::kFloat, up, kCuda), activation, p0, p1);
}

void register_ops(torch::Library& m) {
  m.impl("gated_fwd", &gated_fwd);
  m.impl("gated_bwd", &gated_bwd);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCUDA, m) {
  m.impl("gated_fwd", &gated_fwd_autocast_cuda);
}

}  // namespace backprop_ext
