// Argument checks and shapes shared by the CPU and CUDA linear ops. The fake kernels in
// backprop_ext/linear.py raise the same messages, so eager and traced code fail alike.
//
//   input  (*, in_features)              any number of leading dims, at least 1-D
//   weight (out_features, in_features)
//   bias   (out_features,) or none
//   output (*, out_features)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "activation_math.h"
#include "checks.h"

namespace backprop_ext {

// "none" (a plain linear layer) or one of activation_math.h's names.
inline std::optional<Activation> parse_linear_activation(c10::string_view name) {
  if (name == "none") return std::nullopt;
  return parse_activation(name);
}

// True where backward needs the pre-activation z = x W^T + b kept from forward: activations whose
// derivative is a function of their input. relu, sigmoid and tanh read their output instead.
inline bool needs_preact(std::optional<Activation> act) {
  return act.has_value() && !activation_saves_output(*act);
}

inline void check_linear_args(const char* op, const at::Tensor& input, const at::Tensor& weight,
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
              "shape ", input.sizes(), " and weight of shape ", weight.sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op,
                ": expected bias of shape (out_features,) = (", weight.size(0),
                ",), but got shape ", bias->sizes());
    check_same(op, "input", input, "bias", *bias);
  }
}

// input.shape[:-1] + (out_features,)
inline std::vector<int64_t> linear_output_sizes(const at::Tensor& input, const at::Tensor& weight) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end() - 1);
  sizes.push_back(weight.size(0));
  return sizes;
}

// linear_bwd's tensors: grad_output has the forward output's shape; `saved` (the pre-activation,
// or the output for relu/sigmoid/tanh) too, unless there is no activation, where it is ignored.
inline void check_linear_bwd_args(const char* op, const at::Tensor& grad_output,
                                  const at::Tensor& input, const at::Tensor& weight,
                                  const at::Tensor& saved, std::optional<Activation> act) {
  check_linear_args(op, input, weight, std::nullopt);
  check_same(op, "input", input, "grad_output", grad_output);
  const auto out_sizes = linear_output_sizes(input, weight);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(out_sizes), op,
              ": expected grad_output of shape ", c10::IntArrayRef(out_sizes),
              " (input.shape[:-1] + (out_features,)), but got ", grad_output.sizes());
  if (act.has_value()) {
    check_same(op, "grad_output", grad_output, "saved", saved);
    check_same_shape(op, "grad_output", grad_output, "saved", saved);
  }
}

}  // namespace backprop_ext
