// The activation family's ops, for every device: checks, layout and allocation, then the
// device's kernel (activation.h's stubs). Math: activation_math.h; kernels: cpu/activation.cpp,
// cuda/activation.cu.
//
//   activation_fwd(x, name, p0, p1) -> y            y = f(x)
//   activation_fwd_(x, name, p0, p1)                x = f(x), in place
//   activation_bwd(grad_y, saved, name, p0, p1)     grad_y * f'(saved), saved = y or x (see
//                                                   activation_table.h's `reads`)
#include <ATen/autocast_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "core/checks.h"
#include "core/elementwise.h"
#include "ops/activation.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(activation_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(activation_bwd_stub);

namespace {

at::Tensor activation_fwd(const at::Tensor& self, c10::string_view activation, double p0,
                          double p1) {
  check_float("activation_fwd", "self", self);
  const Activation act = activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(self));
  const at::Tensor x = as_flat(self);
  at::Tensor out = at::empty_like(x);
  if (x.numel() > 0) activation_fwd_stub(x.device().type(), x, out, act, p0, p1);
  return out;
}

void activation_fwd_(at::Tensor& self, c10::string_view activation, double p0, double p1) {
  check_float("activation_fwd_", "self", self);
  const Activation act = activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(self));
  if (!self.is_non_overlapping_and_dense()) {
    self.copy_(activation_fwd(self, activation, p0, p1));
  } else if (self.numel() > 0) {
    activation_fwd_stub(self.device().type(), self, self, act, p0, p1);
  }
}

at::Tensor activation_bwd(const at::Tensor& grad_output, const at::Tensor& saved,
                          c10::string_view activation, double p0, double p1) {
  check_float("activation_bwd", "grad_output", grad_output);
  check_same("activation_bwd", "grad_output", grad_output, "saved", saved);
  check_same_shape("activation_bwd", "grad_output", grad_output, "saved", saved);
  const Activation act = activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(grad_output));
  if (is_broadcast_value(grad_output)) {
    // Not copied out to a dense gradient (one more tensor at the step's peak): the value is
    // written where the result goes and the kernel reads it there, each element before writing
    // it. torch's own backward reads a broadcast gradient in place too.
    // Contiguous, as the general path lays out a broadcast operand's result (elementwise.h).
    const at::Tensor s = saved.contiguous();
    at::Tensor grad_input = at::empty(s.sizes(), s.options()).copy_(grad_output);
    activation_bwd_stub(s.device().type(), grad_input, s, grad_input, act, p0, p1);
    return grad_input;
  }
  const auto [g, s] = as_flat(grad_output, saved);
  at::Tensor grad_input = at::empty_like(g);
  if (g.numel() > 0) activation_bwd_stub(g.device().type(), g, s, grad_input, act, p0, p1);
  return grad_input;
}

// The in-place form records the write in self's version counter, as torch's own in-place ops
// do (their ADInplaceOrView kernels), so that autograd refuses a backward that would read values
// overwritten since they were saved.
void activation_fwd_inplace_or_view(c10::DispatchKeySet keys, at::Tensor& self,
                                    c10::string_view activation, double p0, double p1) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("backprop_ext::activation_fwd_", "")
                             .typed<decltype(activation_fwd_)>();
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatch(keys & c10::after_ADInplaceOrView_keyset, self, activation, p0, p1);
  }
  torch::autograd::impl::bump_version(self);
}

// Under CUDA autocast, the dtype torch's own activation runs in (cuda_autocast_in_float32).
at::Tensor activation_fwd_autocast_cuda(const at::Tensor& self, c10::string_view activation,
                                        double p0, double p1) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("backprop_ext::activation_fwd", "")
                             .typed<decltype(activation_fwd)>();
  const bool fp32 = cuda_autocast_in_float32(activation_from_name(activation));
  return op.call(fp32 ? at::autocast::cached_cast(at::kFloat, self, c10::DeviceType::CUDA) : self,
                 activation, p0, p1);
}

void register_ops(torch::Library& m) {
  m.impl("activation_fwd", &activation_fwd);
  m.impl("activation_fwd_", &activation_fwd_);
  m.impl("activation_bwd", &activation_bwd);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCUDA, m) {
  m.impl("activation_fwd", &activation_fwd_autocast_cuda);
}

TORCH_LIBRARY_IMPL(backprop_ext, ADInplaceOrView, m) {
  m.impl("activation_fwd_", TORCH_FN(activation_fwd_inplace_or_view));
}

}  // namespace backprop_ext
