// The C++ graph nodes of the plain-eager autograd path (eager_autograd.h).
#include "python/eager_autograd.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/div.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ne.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "core/op_handle.h"
#include "math/activation_math.h"

namespace backprop_ext::eager {
namespace {

using torch::autograd::collect_next_edges;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

// The op `name` as its signature `Sig`, looked up once.
#define BACKPROP_EXT_OP(var, name, ...) \
  static const auto var = find_op<__VA_ARGS__>("backprop_ext::" name)

// A new graph node. Graph nodes are owned by std::shared_ptr on torch 2.11 (freed through
// deleteNode, which unwinds long chains without deep recursion) and by c10::intrusive_ptr on
// later releases; Node::getptr() is the owning pointer's type either way.
using NodePtr = std::decay_t<decltype(std::declval<Node&>().getptr())>;

template <typename N, typename... A>
auto make_node(A&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    return std::shared_ptr<N>(new N(std::forward<A>(args)...),
                              [](N* node) { deleteNode(node); });  // torch::autograd's, by ADL
  } else {
    return c10::make_intrusive<N>(std::forward<A>(args)...);
  }
}

// Records `node` as the creator of `outputs` (the differentiable ones), with `inputs` as its
// next edges.
template <typename P>
P record(P node, const variable_list& inputs, const variable_list& outputs) {
  node->set_next_edges(collect_next_edges(inputs));
  torch::autograd::set_history(outputs, node);
  return node;
}

// The op `op` called below autograd: what the node's forward computes.
template <typename Op, typename... A>
auto below_autograd(const Op& op, const A&... args) {
  const at::AutoDispatchBelowAutograd below;
  return op.call(args...);
}

// A node whose backward reads the SavedVariables it names in release_variables().
struct SavingNode : Node {
 protected:
  void release(std::initializer_list<SavedVariable*> saved) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable* v : saved) v->reset_data();
  }
};

// The gradient of the node's one output, zeros where none flows: as an autograd.Function's
// backward gets it (materialized grads), which the rules are. (CrossEntropyLossBackward's rule
// does not materialize, nor does it.)
at::Tensor materialized(const Node& node, const variable_list& grads) {
  return grads[0].defined() ? grads[0] : node.input_metadata(0).zeros_like();
}

// An activation's or a gated activation's arguments besides the tensors.
struct Act {
  std::string name;
  double p0, p1;
};

// --- activation_fwd: y = f(x); saves y or x (the activation table's `reads`)

struct ActivationBackward final : SavingNode {
  explicit ActivationBackward(Act act) : act(std::move(act)) {}
  variable_list apply(variable_list&& grads) override {
    BACKPROP_EXT_OP(
        bwd, "activation_bwd",
        at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double, double));
    const at::Tensor s = saved.unpack(getptr());
    return {bwd.call(materialized(*this, grads), s, act.name, act.p0, act.p1)};
  }
  std::string name() const override { return "backprop_ext::ActivationBackward"; }
  void release_variables() override { release({&saved}); }
  Act act;
  SavedVariable saved;
};

// --- gated_fwd: y = f(gate) up; saves gate and up

struct GatedBackward final : SavingNode {
  explicit GatedBackward(Act act) : act(std::move(act)) {}
  variable_list apply(variable_list&& grads) override {
    BACKPROP_EXT_OP(
        bwd, "gated_bwd",
        std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           c10::string_view, double, double));
    const at::Tensor g = gate.unpack(getptr()), u = up.unpack(getptr());
    auto [grad_gate, grad_up] =
        bwd.call(materialized(*this, grads), g, u, act.name, act.p0, act.p1);
    return {should_compute_output(0) ? grad_gate : at::Tensor(),
            should_compute_output(1) ? grad_up : at::Tensor()};
  }
  std::string name() const override { return "backprop_ext::GatedBackward"; }
  void release_variables() override { release({&gate, &up}); }
  Act act;
  SavedVariable gate, up;
};

// --- softmax_fwd: y = softmax(x) or log_softmax(x); saves y

struct SoftmaxBackward final : SavingNode {
  SoftmaxBackward(int64_t dim, bool log) : dim(dim), log(log) {}
  variable_list apply(variable_list&& grads) override {
    BACKPROP_EXT_OP(bwd, "softmax_bwd",
                    at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, bool));
    const at::Tensor y = output.unpack(getptr());
    return {bwd.call(materialized(*this, grads), y, dim, log)};
  }
  std::string name() const override { return "backprop_ext::SoftmaxBackward"; }
  void release_variables() override { release({&output}); }
  int64_t dim;
  bool log;
  SavedVariable output;
};

// --- logsumexp_fwd: r = logsumexp(x, dim), dim kept; saves x and r

struct LogsumexpBackward final : SavingNode {
  explicit LogsumexpBackward(int64_t dim) : dim(dim) {}
  variable_list apply(variable_list&& grads) override {
    BACKPROP_EXT_OP(bwd, "logsumexp_bwd",
                    at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t));
    const at::Tensor x = self.unpack(getptr());
    const at::Tensor r = result.unpack(getptr());
    return {bwd.call(materialized(*this, grads), x, r, dim)};
  }
  std::string name() const override { return "backprop_ext::LogsumexpBackward"; }
  void release_variables() override { release({&self, &result}); }
  int64_t dim;
  SavedVariable self, result;
};

// --- cross_entropy_loss_fwd: (loss, lse, total), lse and total not differentiable; saves the
// logits, target, weight, lse and total. CrossEntropyLossFunction.backward's formula: with
// scale = grad (/ total for "mean"), the rows' gradients are grad_nll = (1 - eps) scale w_i and
// grad_smooth = eps / C scale, handed to cross_entropy_bwd (which zeroes ignored rows).

struct CrossEntropyLossBackward final : SavingNode {
  CrossEntropyLossBackward(int64_t ignore_index, double eps, bool mean)
      : ignore_index(ignore_index), eps(eps), mean(mean) {}
  variable_list apply(variable_list&& grads) override {
    BACKPROP_EXT_OP(bwd, "cross_entropy_bwd",
                    at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                               const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t));
    const auto self = getptr();
    const at::Tensor x = logits.unpack(self), t = target.unpack(self), l = lse.unpack(self);
    const at::Tensor tot = total.unpack(self), w = weight.unpack(self);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return {at::Tensor()};
    const at::Tensor scale = mean ? grad.div(tot) : grad;
    const at::Tensor row = eps != 0 ? scale.mul(1 - eps) : scale;
    at::Tensor grad_nll;
    if (!w.defined()) {
      grad_nll = row.expand(l.sizes());
    } else {
      const at::Tensor keep = t.ne(ignore_index);
      const at::Tensor class_w = w.to(l.scalar_type()).index_select(0, t.clamp(0, w.size(0) - 1));
      grad_nll = class_w.mul(keep).mul(row);
    }
    OptTensor grad_smooth;
    if (eps != 0) grad_smooth = scale.mul(eps / static_cast<double>(x.size(1))).expand(l.sizes());
    const OptTensor w_opt = w.defined() ? OptTensor(w) : std::nullopt;
    return {bwd.call(x, t, w_opt, l, grad_nll, grad_smooth, ignore_index)};
  }
  std::string name() const override { return "backprop_ext::CrossEntropyLossBackward"; }
  void release_variables() override { release({&logits, &target, &weight, &lse, &total}); }
  int64_t ignore_index;
  double eps;
  bool mean;
  SavedVariable logits, target, weight, lse, total;
};

}  // namespace

at::Tensor activation_fwd(const at::Tensor& x, c10::string_view activation, double p0, double p1) {
  BACKPROP_EXT_OP(op, "activation_fwd",
                  at::Tensor(const at::Tensor&, c10::string_view, double, double));
  auto y = below_autograd(op, x, activation, p0, p1);
  auto node = record(make_node<ActivationBackward>(Act{std::string(activation), p0, p1}), {x}, {y});
  const bool output = activation_saves_output(activation_from_name(activation));
  node->saved = SavedVariable(output ? y : x, /*is_output=*/output);
  return y;
}

at::Tensor gated_fwd(const at::Tensor& gate, const at::Tensor& up, c10::string_view activation,
                     double p0, double p1) {
  BACKPROP_EXT_OP(
      op, "gated_fwd",
      at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double, double));
  auto y = below_autograd(op, gate, up, activation, p0, p1);
  auto node =
      record(make_node<GatedBackward>(Act{std::string(activation), p0, p1}), {gate, up}, {y});
  node->gate = SavedVariable(gate, false);
  node->up = SavedVariable(up, false);
  return y;
}

at::Tensor softmax_fwd(const at::Tensor& x, int64_t dim, bool log) {
  BACKPROP_EXT_OP(op, "softmax_fwd", at::Tensor(const at::Tensor&, int64_t, bool));
  auto y = below_autograd(op, x, dim, log);
  auto node = record(make_node<SoftmaxBackward>(dim, log), {x}, {y});
  node->output = SavedVariable(y, /*is_output=*/true);
  return y;
}

at::Tensor logsumexp_fwd(const at::Tensor& x, int64_t dim) {
  BACKPROP_EXT_OP(op, "logsumexp_fwd", at::Tensor(const at::Tensor&, int64_t));
  auto r = below_autograd(op, x, dim);
  auto node = record(make_node<LogsumexpBackward>(dim), {x}, {r});
  node->self = SavedVariable(x, false);
  node->result = SavedVariable(r, /*is_output=*/true);
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_loss_fwd(
    const at::Tensor& logits, const at::Tensor& target, const OptTensor& weight,
    int64_t ignore_index, double label_smoothing, c10::string_view reduction) {
  using Sig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const OptTensor&, int64_t, double, c10::string_view);
  BACKPROP_EXT_OP(op, "cross_entropy_loss_fwd", Sig);
  auto out = below_autograd(op, logits, target, weight, ignore_index, label_smoothing, reduction);
  const auto& [loss, lse, total] = out;
  auto node = record(
      make_node<CrossEntropyLossBackward>(ignore_index, label_smoothing, reduction == "mean"),
      {logits}, {loss});
  node->logits = SavedVariable(logits, false);
  node->target = SavedVariable(target, false);
  if (weight.has_value() && weight->defined()) node->weight = SavedVariable(*weight, false);
  node->lse = SavedVariable(lse, false);
  node->total = SavedVariable(total, false);
  return out;
}

}  // namespace backprop_ext::eager
