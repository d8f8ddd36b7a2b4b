// The linear family's kernel stubs (see stub.h): csrc/ops/linear.cpp holds the ops, which check
// their arguments, flatten the input to (M, K) and allocate, then call these; cpu/linear.cpp and
// cuda/linear.cu register the kernels.
//
//   input  (*, K) seen as x (M, K)     weight W (N, K)     bias b (N,) or undefined
//   z = x W^T + b (M, N), the pre-activation;  y = act(z), the output
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "core/stub.h"
#include "math/activation_math.h"

namespace backprop_ext {

// "none" (a plain linear layer) or one of the activation table's names.
inline std::optional<Activation> linear_activation_from_name(c10::string_view name) {
  if (name == "none") return std::nullopt;
  return activation_from_name(name);
}

// True where backward needs the pre-activation z kept from forward: activations whose derivative
// is a function of their input. relu, relu6, sigmoid and tanh read their output instead.
inline bool needs_preact(std::optional<Activation> act) {
  return act.has_value() && !activation_saves_output(*act);
}

// Writes z = x W^T + b into `z` and y = act(z) into `y`, both (M, N). `y` is `z` itself when the
// pre-activation is not kept (the activation then runs in place), and when there is no
// activation. M, N, K may be 0.
using linear_fwd_fn = void (*)(const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias, std::optional<Activation> act, double p0,
                               double p1, at::Tensor& z, at::Tensor& y);
// gz = g act'(s) over contiguous (M, N) g and s, and, when want_bias, gb = sum_rows gz (N,) in a
// fixed order (the same bits whatever the thread count); gb undefined otherwise. With into_g, gz
// is written over g (the caller's own copy: each element is read before it is written) and
// returned as gz.
using bias_act_bwd_fn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& g,
                                                               const at::Tensor& s, Activation act,
                                                               double p0, double p1, bool want_bias,
                                                               bool into_g);
// gW = gz^T x (N, K); when want_bias and the device computes it in the same pass, also
// gb = sum_rows gz (undefined otherwise: the op sums it).
using weight_grad_fn = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& gz,
                                                              const at::Tensor& x, bool want_bias);

BACKPROP_EXT_DECLARE_STUB(linear_fwd_stub, linear_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(bias_act_bwd_stub, bias_act_bwd_fn);
BACKPROP_EXT_DECLARE_STUB(weight_grad_stub, weight_grad_fn);

}  // namespace backprop_ext
