// The ops' autograd in plain eager, in C++: what an op's entry point (csrc/python/ops.cpp) runs
// when a call records a gradient and nothing else (grad mode on and an input requiring grad; no
// forward-mode tangent, no functorch transform, no mode or tracing). Each function computes the
// op below autograd and records one C++ graph node, as torch's own ops do, whose backward calls
// the op's backward op through the dispatcher (so a create_graph backward records that op's
// autograd in turn). The tensors backward reads are SavedVariables: saved-tensor hooks
// (checkpointing, save_on_cpu) see them, in-place changes are detected, retain_graph is honoured.
//
// The formulas are those of the op's Python autograd rule (backprop_ext/ops/<family>.py), which
// every other call takes (forward mode, functorch, torch.compile, export);
// tests/test_op_autograd.py checks that both give the same gradients. An op without a node here
// always takes its rule.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace backprop_ext::eager {

at::Tensor activation_fwd(const at::Tensor& x, c10::string_view activation, double p0, double p1);

at::Tensor gated_fwd(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation,
                     double p0, double p1);

at::Tensor softmax_fwd(const at::Tensor& x, int64_t dim, bool log);

at::Tensor logsumexp_fwd(const at::Tensor& x, int64_t dim);

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_loss_fwd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double label_smoothing, c10::string_view reduction);

}  // namespace backprop_ext::eager
