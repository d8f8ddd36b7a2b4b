// The linear family's ops, for every device: out = act(input @ weight^T + bias) and its
// backward. Argument checks, the (M, K) view and allocation live here; the products and the
// fused passes are the devices' kernels (linear.h's stubs; cpu/linear.cpp, cuda/linear.cu). The
// fake kernels in backprop_ext/linear.py raise the same messages, so eager and traced code fail
// alike.
//
//   input  (*, in_features)              any number of leading dims, at least 1-D
//   weight (out_features, in_features)
//   bias   (out_features,) or none
//   output (*, out_features)
//
//   linear_fwd(input, weight, bias, activation, p0, p1, save_preact) -> (out, preact)
//   linear_bwd(grad_out, input, weight, saved, activation, p0, p1, output_mask)
//       -> (grad_input, grad_weight, grad_bias)
//   linear_preact_bwd(grad_out, saved, activation, p0, p1, want_bias) -> (grad_preact, grad_bias)
//       linear_bwd's first pass on its own: with it, a backward can take the weight gradient
//       (linear_bwd(grad_preact, ..., "none", {false, true, false})), drop the input, and only
//       then allocate the input gradient (grad_preact @ weight): the same kernels, the same bits,
//       one tensor of the input's size less at the peak when the input was rebuilt for backward.
//
// Under autocast, linear_fwd casts its operands as torch's linear does (to the autocast dtype).
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "core/checks.h"
#include "core/elementwise.h"
#include "ops/linear.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(linear_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(bias_act_bwd_stub);
BACKPROP_EXT_DEFINE_STUB(weight_grad_stub);

namespace {

void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  check_float(op, "input", input);
  TORCH_CHECK(input.dim() >= 1, op,
              ": expected input of shape (*, in_features) with at least 1 dimension, but got a "
              "0-d tensor");
  TORCH_CHECK(weight.dim() == 2, op,
              ": expected weight of shape (out_features, in_features), but got shape ",
              weight.sizes());
  check_same(op, "input", input, "weight", weight);
  TORCH_CHECK(input.size(-1) == weight.size(1), op,
              ": expected input.shape[-1] == weight.shape[1] (in_features), but got input of "
              "shape ",
              input.sizes(), " and weight of shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": expected bias of shape (out_features,) = (", weight.size(0),
                ",), but got shape ", bias->sizes());
    check_same(op, "input", input, "bias", *bias);
  }
}

// input.shape[:-1] + (out_features,)
std::vector<int64_t> output_sizes(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end() - 1);
  sizes.push_back(weight.size(0));
  return sizes;
}

int64_t leading_size(const at::Tensor& t) {
  return c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1);
}

std::tuple<at::Tensor, at::Tensor> linear_fwd(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias,
                                              c10::string_view activation, double p0, double p1,
                                              bool save_preact) {
  check_linear_args("linear_fwd", input, weight, bias);
  const auto act = linear_activation_from_name(activation);
  const c10::OptionalDeviceGuard guard(device_of(input));
  const int64_t n = weight.size(0), k = weight.size(1), m = leading_size(input);
  // (M, K) and (M, N) views of the operands; 2-d ones as they are (a view costs as much as a
  // tiny layer's GEMM).
  const bool flat = input.dim() == 2;
  const at::Tensor x = flat ? input : input.reshape({m, k});
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const auto sizes = output_sizes(input, weight);
  // Without a pre-activation to keep, the activation overwrites the GEMM output in place.
  const bool keep = save_preact && needs_preact(act);
  at::Tensor z = at::empty(sizes, input.options());
  at::Tensor y = keep ? at::empty(sizes, input.options()) : z;
  at::Tensor z2d = flat ? z : z.view({m, n});
  at::Tensor y2d = !keep ? z2d : flat ? y : y.view({m, n});
  linear_fwd_stub(input.device().type(), x, weight, b, act, p0, p1, z2d, y2d);
  return {y, keep ? z : at::empty({0}, input.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bwd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::string_view activation, double p0, double p1,
    std::array<bool, 3> output_mask) {
  const char* op = "linear_bwd";
  const auto act = linear_activation_from_name(activation);
  check_linear_args(op, input, weight, std::nullopt);
  check_same(op, "input", input, "grad_output", grad_output);
  const auto sizes = output_sizes(input, weight);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(sizes), op,
              ": expected grad_output of shape ", c10::IntArrayRef(sizes),
              " (input.shape[:-1] + (out_features,)), but got ", grad_output.sizes());
  if (act.has_value()) {  // `saved` is ignored without an activation
    check_same(op, "grad_output", grad_output, "saved", saved);
    check_same_shape(op, "grad_output", grad_output, "saved", saved);
  }
  const c10::OptionalDeviceGuard guard(device_of(input));
  const c10::DeviceType device = input.device().type();
  const int64_t n = weight.size(0), k = weight.size(1), m = leading_size(input);
  // Gradients not asked for come back as empty tensors, each its own (outputs never alias).
  const auto none = [&] { return at::empty({0}, input.options()); };
  // (M, N) and (M, K) views; 2-d operands as they are.
  const bool flat = input.dim() == 2;
  const auto as_2d = [flat](const at::Tensor& t, int64_t rows, int64_t cols) {
    return flat ? t : t.reshape({rows, cols});
  };
  const at::Tensor g = as_2d(grad_output, m, n).contiguous();
  // A broadcast gradient (sum()'s, mean()'s) was just copied out to g, which is then ours to
  // overwrite with the pre-activation's gradient: one (M, N) tensor less.
  const bool g_is_ours = is_broadcast_value(grad_output);

  at::Tensor grad_preact = g, grad_bias;
  if (act.has_value()) {
    std::tie(grad_preact, grad_bias) = bias_act_bwd_stub(device, g, as_2d(saved, m, n).contiguous(),
                                                         *act, p0, p1, output_mask[2], g_is_ours);
  }
  at::Tensor grad_input, grad_weight;
  if (output_mask[0]) {
    grad_input = at::mm(grad_preact, weight);
    if (!flat) grad_input = grad_input.view(input.sizes());
  }
  if (output_mask[1]) {
    at::Tensor fused_bias;
    std::tie(grad_weight, fused_bias) = weight_grad_stub(device, grad_preact, as_2d(input, m, k),
                                                         output_mask[2] && !grad_bias.defined());
    if (fused_bias.defined()) grad_bias = fused_bias;
  }
  if (output_mask[2] && !grad_bias.defined()) grad_bias = grad_preact.sum(0);
  return {output_mask[0] ? grad_input : none(), output_mask[1] ? grad_weight : none(),
          output_mask[2] ? grad_bias : none()};
}

std::tuple<at::Tensor, at::Tensor> linear_preact_bwd(const at::Tensor& grad_output,
                                                     const at::Tensor& saved,
                                                     c10::string_view activation, double p0,
                                                     double p1, bool want_bias) {
  const char* op = "linear_preact_bwd";
  const auto act = linear_activation_from_name(activation);
  TORCH_CHECK(act.has_value(), op,
              ": expected an activation (with \"none\" the pre-activation's gradient is "
              "grad_output itself)");
  check_float(op, "grad_output", grad_output);
  TORCH_CHECK(grad_output.dim() >= 1, op,
              ": expected grad_output of shape (*, out_features) with at least 1 dimension, but "
              "got a 0-d tensor");
  check_same(op, "grad_output", grad_output, "saved", saved);
  check_same_shape(op, "grad_output", grad_output, "saved", saved);
  const c10::OptionalDeviceGuard guard(device_of(grad_output));
  const int64_t n = grad_output.size(-1), m = leading_size(grad_output);
  const bool flat = grad_output.dim() == 2;
  const auto as_2d = [&](const at::Tensor& t) {
    return (flat ? t : t.reshape({m, n})).contiguous();
  };
  // A broadcast gradient is copied out by as_2d: that copy then takes grad_preact (as linear_bwd).
  auto [grad_preact, grad_bias] =
      bias_act_bwd_stub(grad_output.device().type(), as_2d(grad_output), as_2d(saved), *act, p0, p1,
                        want_bias, is_broadcast_value(grad_output));
  if (!flat) grad_preact = grad_preact.view(grad_output.sizes());
  return {grad_preact, want_bias ? grad_bias : at::empty({0}, grad_output.options())};
}

template <c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> linear_fwd_autocast(const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       c10::string_view activation, double p0,
                                                       double p1, bool save_preact) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("backprop_ext::linear_fwd", "")
                             .typed<decltype(linear_fwd)>();
  const auto dtype = at::autocast::get_autocast_dtype(kDevice);
  const at::Tensor x = at::autocast::cached_cast(dtype, input, kDevice);
  const at::Tensor w = at::autocast::cached_cast(dtype, weight, kDevice);
  const std::optional<at::Tensor> b = at::autocast::cached_cast(dtype, bias, kDevice);
  const auto act = linear_activation_from_name(activation);
  if (kDevice == c10::DeviceType::CUDA && act.has_value() && cuda_autocast_in_float32(*act)) {
    // As torch's act(F.linear(x)): the GEMM in the autocast dtype, the activation in float32
    // (a float32 result), two ops (each with its own autograd) instead of the fused one.
    static const auto act_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("backprop_ext::activation_fwd", "")
            .typed<at::Tensor(const at::Tensor&, c10::string_view, double, double)>();
    const at::Tensor z = std::get<0>(op.call(x, w, b, "none", 0.0, 0.0, false));
    const at::Tensor y =
        act_op.call(at::autocast::cached_cast(at::kFloat, z, kDevice), activation, p0, p1);
    return {y, save_preact ? z : at::empty({0}, z.options())};
  }
  return op.call(x, w, b, activation, p0, p1, save_preact);
}

void register_ops(torch::Library& m) {
  m.impl("linear_fwd", &linear_fwd);
  m.impl("linear_bwd", &linear_bwd);
  m.impl("linear_preact_bwd", &linear_preact_bwd);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCPU, m) {
  m.impl("linear_fwd", &linear_fwd_autocast<c10::DeviceType::CPU>);
}
TORCH_LIBRARY_IMPL(backprop_ext, AutocastCUDA, m) {
  m.impl("linear_fwd", &linear_fwd_autocast<c10::DeviceType::CUDA>);
}

}  // namespace backprop_ext
