// The cross-entropy family's ops, for every device: argument checks, layout and allocation, then
// the device's kernel (cross_entropy.h's stubs). Kernels: cpu/cross_entropy.cpp,
// cuda/cross_entropy.cu; the row statistics they share with softmax: softmax_math.h.
//
//   cross_entropy_fwd(logits (N, C), target (N,), weight, ignore_index, smoothing)
//       -> nll (N,), smooth (N,) or (0,), lse (N,)          [opmath dtype]
//   cross_entropy_bwd(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index) -> grad
//   cross_entropy_bwd_out(..., out)                          the same, written into `out`
//   cross_entropy_loss_fwd(logits, target, weight, ignore_index, label_smoothing, reduction)
//       -> loss, lse, total: the rows' loss reduced; its backward is cross_entropy_bwd's with
//       the rows' gradients (backprop_ext/ops/cross_entropy.py)
//   cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing) -> loss
//       the loss as torch.nn.functional.cross_entropy computes it, any shape and target kind:
//       composite, of the ops above and softmax_fwd (class probabilities)
//
// Under autocast, cross_entropy runs in float32 on CPU and CUDA, as torch's cross_entropy does.
#include <ATen/OpMathType.h>
#include <ATen/autocast_mode.h>
#include <ATen/ops/_assert_async.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/movedim.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/neg.h>
#include <ATen/ops/reshape.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/to.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/checks.h"
#include "core/op_handle.h"
#include "ops/cross_entropy.h"
#include "ops/softmax.h"

namespace backprop_ext {

BACKPROP_EXT_DEFINE_STUB(cross_entropy_fwd_stub);
BACKPROP_EXT_DEFINE_STUB(cross_entropy_bwd_stub);
BACKPROP_EXT_DEFINE_STUB(cross_entropy_reduce_stub);

namespace {

// --- checks

// logits (N, C) float; target (N,) int64; weight (C,) of logits' dtype.
void check_cross_entropy_args(const char* op, const at::Tensor& logits, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight) {
  check_float(op, "logits", logits);
  TORCH_CHECK(logits.dim() == 2, op, ": expected logits of shape (N, C), but got ", logits.sizes());
  TORCH_CHECK(logits.size(1) > 0, op, ": expected at least one class, but got logits of shape ",
              logits.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong, op,
              ": expected class-index target of dtype int64, but got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op,
              ": expected target of shape (", logits.size(0), ",) to match logits ", logits.sizes(),
              ", but got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op,
              ": expected target on the same device as logits (", logits.device(), "), but got ",
              target.device());
  if (weight.has_value()) {
    check_same(op, "logits", logits, "weight", *weight);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == logits.size(1), op,
                ": expected weight of shape (", logits.size(1), ",) (one per class), but got ",
                weight->sizes());
  }
}

// A per-row tensor (N,) in logits' opmath dtype, on logits' device.
void check_row_tensor(const char* op, const char* arg, const at::Tensor& t,
                      const at::Tensor& logits) {
  const auto dtype = at::toOpMathType(logits.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == logits.size(0), op, ": expected ", arg, " of shape (",
              logits.size(0), ",), but got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype && t.device() == logits.device(), op, ": expected ", arg,
              " of dtype ", dtype, " on ", logits.device(), ", but got ", t.scalar_type(), " on ",
              t.device());
}

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}
// --- cross-entropy, per row

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_fwd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, bool smoothing) {
  check_cross_entropy_args("cross_entropy_fwd", logits, target, weight);
  const c10::OptionalDeviceGuard guard(device_of(logits));
  const int64_t N = logits.size(0);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const auto opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor nll = at::empty({N}, opts), lse = at::empty({N}, opts);
  at::Tensor smooth = at::empty({smoothing ? N : 0}, opts);
  at::Tensor smooth_out = smoothing ? smooth : at::Tensor();
  if (N > 0) {
    cross_entropy_fwd_stub(x.device().type(), x, t, w, ignore_index, nll, smooth_out, lse);
  }
  return {nll, smooth, lse};
}

void cross_entropy_bwd_out(const at::Tensor& logits, const at::Tensor& target,
                           const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                           const at::Tensor& grad_nll, const std::optional<at::Tensor>& grad_smooth,
                           int64_t ignore_index, at::Tensor& out) {
  const char* op = "cross_entropy_bwd";
  check_cross_entropy_args(op, logits, target, weight);
  check_row_tensor(op, "lse", lse, logits);
  check_row_tensor(op, "grad_nll", grad_nll, logits);
  if (grad_smooth.has_value()) check_row_tensor(op, "grad_smooth", *grad_smooth, logits);
  check_same(op, "logits", logits, "out", out);
  check_same_shape(op, "logits", logits, "out", out);
  TORCH_CHECK(out.is_contiguous(), op,
              ": expected a contiguous out (its rows are written in "
              "place), but got strides ",
              out.strides());
  const c10::OptionalDeviceGuard guard(device_of(logits));
  if (out.numel() == 0) return;
  // out may be the logits themselves: each element is read before it is written. Another
  // tensor sharing memory with them is not supported.
  const at::Tensor x = out.is_same(logits) ? logits : logits.contiguous();
  cross_entropy_bwd_stub(x.device().type(), x, target.contiguous(), contiguous_or_undefined(weight),
                         lse.contiguous(), grad_nll.contiguous(),
                         contiguous_or_undefined(grad_smooth), ignore_index, out);
}

// Sizes as Python prints a shape: (3,), (2, 3), ().
std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << (sizes.size() == 1 ? ",)" : ")");
  return out.str();
}

Reduction reduction_from_name(const char* op, c10::string_view name) {
  if (name == "mean") return Reduction::kMean;
  if (name == "sum") return Reduction::kSum;
  TORCH_CHECK_VALUE(name == "none", op, ": reduction must be one of ('none', 'mean', 'sum'), got '",
                    name, "'");
  return Reduction::kNone;
}

void check_label_smoothing(const char* op, double label_smoothing) {
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
              ": label_smoothing must be in [0, 1], got ", label_smoothing);
}

// A target of the wrong shape: torch's ValueError where the batch sizes differ (input's and
// target's first dims, both present), a RuntimeError otherwise.
void check_target_shape(const char* what, const at::Tensor& input, const at::Tensor& target,
                        at::IntArrayRef expected) {
  if (target.sizes() == expected) return;
  const std::string message = c10::str(
      "cross_entropy: expected ", what, " of shape ", shape_str(expected), " for input of shape ",
      shape_str(input.sizes()), ", got ", shape_str(target.sizes()));
  const bool batch = input.dim() >= 2 && target.dim() == static_cast<int64_t>(expected.size()) &&
                     target.size(0) != input.size(0);
  TORCH_CHECK_VALUE(!batch, message);
  TORCH_CHECK(false, message);
}

// --- cross-entropy, reduced

std::tuple<at::Tensor, at::Tensor, at::Tensor> cross_entropy_loss_fwd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double label_smoothing, c10::string_view reduction_name) {
  const char* op = "cross_entropy_loss_fwd";
  check_cross_entropy_args(op, logits, target, weight);
  const Reduction reduction = reduction_from_name(op, reduction_name);
  check_label_smoothing(op, label_smoothing);
  const c10::OptionalDeviceGuard guard(device_of(logits));
  const int64_t N = logits.size(0), C = logits.size(1);
  const at::Tensor x = logits.contiguous(), t = target.contiguous();
  const at::Tensor w = contiguous_or_undefined(weight);
  const auto opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor nll = at::empty({N}, opts), lse = at::empty({N}, opts);
  at::Tensor smooth = label_smoothing > 0 ? at::empty({N}, opts) : at::Tensor();
  at::Tensor loss = reduction == Reduction::kNone ? at::empty({N}, opts) : at::empty({}, opts);
  at::Tensor total = at::empty({}, opts);
  const c10::DeviceType device = x.device().type();
  if (N > 0) cross_entropy_fwd_stub(device, x, t, w, ignore_index, nll, smooth, lse);
  cross_entropy_reduce_stub(device, t, w.defined() ? w.to(opts.dtype()) : w, nll, smooth,
                            ignore_index, label_smoothing, C, reduction, loss, total);
  return {loss, lse, total};
}

at::Tensor cross_entropy_bwd(const at::Tensor& logits, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                             const at::Tensor& grad_nll,
                             const std::optional<at::Tensor>& grad_smooth, int64_t ignore_index) {
  at::Tensor out = at::empty(logits.sizes(), logits.options());
  cross_entropy_bwd_out(logits, target, weight, lse, grad_nll, grad_smooth, ignore_index, out);
  return out;
}
// --- cross_entropy: the loss

using CrossEntropyLossFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
    c10::string_view);
using CrossEntropyLoss = at::Tensor(const at::Tensor&, const at::Tensor&,
                                    const std::optional<at::Tensor>&, c10::string_view, int64_t,
                                    double);
// The loss of (N, 0) logits: torch requires every target to be ignore_index (checked on the
// device, without a host sync, on CUDA) and then gives 0 per row (NaN with label smoothing, whose
// eps / C is infinite), summed to 0 and averaged over no counted target to NaN. The rows stay
// joined to the logits, so that backward gives their (empty) gradient.
at::Tensor cross_entropy_no_classes(const at::Tensor& logits, const at::Tensor& rows_target,
                                    int64_t ignore_index, Reduction reduction, double eps) {
  if (rows_target.numel() > 0) {
    const at::Tensor bad = rows_target.ne(ignore_index);
    if (bad.is_cuda()) {
      at::_assert_async(bad.any().logical_not(),
                        "cross_entropy: target is out of bounds: input has no classes");
    } else if (bad.any().item<bool>()) {
      TORCH_CHECK_INDEX(false, "cross_entropy: target ",
                        rows_target.masked_select(bad)[0].item<int64_t>(),
                        " is out of bounds: input has no classes");
    }
  }
  // Zeros joined to the logits: each row's nll and its smoothing term alike.
  const at::Tensor zero = logits.to(at::toOpMathType(logits.scalar_type())).sum(1);
  // As for C > 0: (1 - eps) nll (weighted, here by 0) plus eps / C smooth, summed or averaged
  // term by term, with eps / C = inf: 0 * inf makes the smoothing term NaN, even over no rows.
  const auto smoothing = [&](const at::Tensor& term) {
    return eps > 0 ? term.mul(std::numeric_limits<double>::infinity()) : term.mul(0.0);
  };
  if (reduction == Reduction::kNone) return zero.mul(1 - eps).add(smoothing(zero));
  at::Tensor nll = zero.sum().mul(1 - eps), smooth = smoothing(zero.sum());
  if (reduction == Reduction::kMean) {  // over a total weight of 0: NaN
    nll = nll.div(0.0);
    smooth = smooth.div(0.0);
  }
  return nll.add(smooth);
}

at::Tensor cross_entropy_indices(const at::Tensor& input, const at::Tensor& target,
                                 const at::Tensor& weight, int64_t class_dim, int64_t ignore_index,
                                 c10::string_view reduction_name, double eps) {
  std::vector<int64_t> expected(input.sizes().begin(), input.sizes().end());
  expected.erase(expected.begin() + class_dim);
  check_target_shape("class-index target", input, target, expected);
  const int64_t C = input.size(class_dim);
  // Rows of C logits; (N, C) as it is. For C = 0 the row count is given (-1 would be ambiguous).
  const at::Tensor moved = input.dim() == 2 ? input : input.movedim(class_dim, -1);
  const at::Tensor logits = input.dim() == 2 ? input
                            : C > 0 ? moved.reshape({-1, C})
                                    : moved.reshape_symint({target.sym_numel(), c10::SymInt(0)});
  const at::Tensor rows_target = target.dim() == 1 ? target : target.reshape({-1});
  at::Tensor loss;
  if (C == 0) {
    loss = cross_entropy_no_classes(logits, rows_target, ignore_index,
                                    reduction_from_name("cross_entropy", reduction_name), eps);
  } else {
    const std::optional<at::Tensor> w =
        weight.defined() ? std::optional<at::Tensor>(weight) : std::nullopt;
    static const auto loss_fwd =
        find_op<CrossEntropyLossFwd>("backprop_ext::cross_entropy_loss_fwd");
    loss = std::get<0>(loss_fwd.call(logits, rows_target, w, ignore_index, eps, reduction_name));
  }
  if (loss.dim() == 1 && target.dim() != 1) loss = loss.reshape(target.sizes());
  return loss.scalar_type() == input.scalar_type() ? loss : loss.to(input.scalar_type());
}

// Probabilities: -sum_c w_c t_c log_softmax(x)_c per row. The product promotes, as torch's does:
// a wider target or weight widens the loss.
at::Tensor cross_entropy_probabilities(const at::Tensor& input, const at::Tensor& target_in,
                                       const at::Tensor& weight, int64_t class_dim,
                                       Reduction reduction, double eps) {
  check_target_shape("class-probability target (input's shape)", input, target_in, input.sizes());
  const int64_t C = input.size(class_dim);
  at::Tensor target = target_in;
  if (eps > 0) {  // torch's eps / C: inf for C = 0
    target = target.mul(1 - eps).add(C > 0 ? eps / static_cast<double>(C)
                                           : std::numeric_limits<double>::infinity());
  }
  static const auto log_softmax = find_op<SoftmaxFwd>("backprop_ext::softmax_fwd");
  at::Tensor prod = log_softmax.call(input, class_dim, true).mul(target);
  if (weight.defined()) {
    std::vector<int64_t> shape(input.dim(), 1);
    shape[class_dim] = C;
    prod = prod.mul(weight.reshape(shape));
  }
  at::Tensor loss = prod.sum(class_dim).neg();
  if (reduction == Reduction::kSum) return loss.sum();
  if (reduction == Reduction::kMean) {
    // torch's NaN for no elements, also when rows remain (C = 0).
    return input.numel() == 0 ? loss.sum().mul(std::numeric_limits<double>::quiet_NaN())
                              : loss.mean();
  }
  return loss;
}

at::Tensor cross_entropy(const at::Tensor& input, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight_arg,
                         c10::string_view reduction_name, int64_t ignore_index,
                         double label_smoothing) {
  const Reduction reduction = reduction_from_name("cross_entropy", reduction_name);
  check_float("cross_entropy", "input", input);
  check_label_smoothing("cross_entropy", label_smoothing);
  // The kinds of torch's errors for the same mistakes: RuntimeError for a wrong shape (but a
  // batch-size mismatch), dtype or device, TypeError for no tensor, ValueError for a reduction.
  TORCH_CHECK(input.dim() > 0,
              "cross_entropy: expected input of shape (C), (N, C) or (N, C, d1, ...), got a 0-d "
              "tensor");
  TORCH_CHECK(target.device() == input.device(), "cross_entropy: expected target on ",
              input.device(), " like input, got ", target.device());
  const int64_t class_dim = input.dim() == 1 ? 0 : 1;
  const int64_t C = input.size(class_dim);
  at::Tensor weight;
  if (weight_arg.has_value() && weight_arg->defined()) {
    weight = *weight_arg;
    TORCH_CHECK(weight.dim() == 1 && weight.size(0) == C,
                "cross_entropy: expected weight of shape (", C, ",) (one per class), got ",
                shape_str(weight.sizes()));
    TORCH_CHECK(weight.device() == input.device(), "cross_entropy: expected weight on ",
                input.device(), " like input, got ", weight.device());
  }
  if (at::isFloatingType(target.scalar_type())) {
    // torch's exception type: a RuntimeError.
    TORCH_CHECK(ignore_index < 0,
                "cross_entropy: ignore_index is not supported for "
                "class-probability targets, got ignore_index=",
                ignore_index);
    return cross_entropy_probabilities(input, target, weight, class_dim, reduction,
                                       label_smoothing);
  }
  TORCH_CHECK(target.scalar_type() == at::kLong,
              "cross_entropy: expected target of dtype int64 (class indices) or a floating dtype "
              "(class probabilities), got ",
              target.scalar_type());
  TORCH_CHECK(!weight.defined() || weight.scalar_type() == input.scalar_type(),
              "cross_entropy: expected weight of input's dtype ", input.scalar_type(), ", got ",
              weight.defined() ? weight.scalar_type() : input.scalar_type());
  return cross_entropy_indices(input, target, weight, class_dim, ignore_index, reduction_name,
                               label_smoothing);
}
// --- autocast: float32, as torch's cross_entropy

template <c10::DeviceType kDevice>
at::Tensor cross_entropy_autocast(const at::Tensor& input, const at::Tensor& target,
                                  const std::optional<at::Tensor>& weight,
                                  c10::string_view reduction, int64_t ignore_index,
                                  double label_smoothing) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  static const auto op = find_op<CrossEntropyLoss>("backprop_ext::cross_entropy");
  return op.call(at::autocast::cached_cast(at::kFloat, input, kDevice),
                 at::autocast::cached_cast(at::kFloat, target, kDevice),
                 at::autocast::cached_cast(at::kFloat, weight, kDevice), reduction, ignore_index,
                 label_smoothing);
}
void register_ops(torch::Library& m) {
  m.impl("cross_entropy_fwd", &cross_entropy_fwd);
  m.impl("cross_entropy_bwd", &cross_entropy_bwd);
  m.impl("cross_entropy_loss_fwd", &cross_entropy_loss_fwd);
  m.impl("cross_entropy_bwd_out", &cross_entropy_bwd_out);
}

}  // namespace

BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(register_ops)

TORCH_LIBRARY_IMPL(backprop_ext, CompositeImplicitAutograd, m) {
  m.impl("cross_entropy", &cross_entropy);
}
// Under vmap too the composite decomposes, into ops that have batching rules (functorch would
// otherwise run it once per sample).
TORCH_LIBRARY_IMPL(backprop_ext, FuncTorchBatchedDecomposition, m) {
  m.impl("cross_entropy", &cross_entropy);
}

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCPU, m) {
  m.impl("cross_entropy", &cross_entropy_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(backprop_ext, AutocastCUDA, m) {
  m.impl("cross_entropy", &cross_entropy_autocast<c10::DeviceType::CUDA>);
}

}  // namespace backprop_ext
