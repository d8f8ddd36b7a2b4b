// Every op schema of backprop_ext, in one place: the one source of each op's signature. The ops
// are implemented once per family for every device (csrc/ops/<family>.cpp), over per-device
// kernels (csrc/cpu/, csrc/cuda/); fake kernels for tracing live in backprop_ext/ops/*.py.
//
// Conventions: forward and backward are separate ops; a backward op takes what its forward saved.
// Activations are named by string (the names of activation_table.h) with two float parameters
// p0, p1: the float parameters of the row's torch.nn.functional signature, in order (leaky_relu:
// p0 = negative_slope; softplus: p0 = beta, p1 = threshold; others: unused).
#include <torch/library.h>

TORCH_LIBRARY(backprop_ext, m) {
  // --- activation family
  m.def("activation_fwd(Tensor self, str activation, float p0=0., float p1=0.) -> Tensor");
  m.def("activation_fwd_(Tensor(a!) self, str activation, float p0=0., float p1=0.) -> ()");
  // `saved` is the forward's output for relu, relu6, sigmoid and tanh and its input otherwise.
  m.def(
      "activation_bwd(Tensor grad_output, Tensor saved, str activation, float p0=0., "
      "float p1=0.) -> Tensor");

  // --- softmax family. One reduced dim; torch's dim tuples and keepdim are handled in Python.
  // log=True gives log_softmax. Backward ops take the forward's output.
  m.def("softmax_fwd(Tensor self, int dim, bool log=False) -> Tensor");
  m.def("softmax_bwd(Tensor grad_output, Tensor output, int dim, bool log=False) -> Tensor");
  // result keeps the reduced dim as size 1; the backward takes grad in that shape.
  m.def("logsumexp_fwd(Tensor self, int dim) -> Tensor");
  m.def("logsumexp_bwd(Tensor grad, Tensor self, Tensor result, int dim) -> Tensor");
  // Class-index cross-entropy over rows of C logits, unreduced and unweighted per row:
  //   nll[i] = lse[i] - logits[i, target[i]]
  //   smooth[i] = sum_c weight[c] (lse[i] - logits[i, c])   (shape (0,) unless smoothing)
  // Rows whose target is ignore_index give 0. nll, smooth and lse are in the opmath dtype.
  m.def(
      "cross_entropy_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "bool smoothing) -> (Tensor nll, Tensor smooth, Tensor lse)");
  m.def(
      "cross_entropy_bwd(Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "Tensor grad_nll, Tensor? grad_smooth, int ignore_index) -> Tensor");
  // The same, written into `out` (N, C), contiguous: a slice of a larger gradient for chunked
  // callers, or the logits themselves (each element is read before it is written). Returns
  // nothing (functionalization, hence torch.compile, takes mutated arguments, not aliased
  // outputs).
  m.def(
      "cross_entropy_bwd_out(Tensor logits, Tensor target, Tensor? weight, Tensor lse, "
      "Tensor grad_nll, Tensor? grad_smooth, int ignore_index, Tensor(a!) out) -> ()");
  // The rows' loss, reduced as torch's reductions do (see cross_entropy.h,
  // cross_entropy_reduce_fn): loss (N,) for "none", 0-d for "sum" and "mean"; total = the sum of
  // the rows' target weights, what "mean" divides by. loss and total in the opmath dtype. Its
  // backward: cross_entropy_bwd.
  m.def(
      "cross_entropy_loss_fwd(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing, str reduction) -> (Tensor loss, Tensor lse, Tensor total)");
  // The loss itself, torch.nn.functional.cross_entropy's: input (C), (N, C) or (N, C, d1, ...),
  // target class indices (int64, input's shape without C) or class probabilities (input's
  // shape); reduction "none", "mean" or "sum". Composite (CompositeImplicitAutograd): it calls
  // cross_entropy_loss_fwd or softmax_fwd (and ATen's reductions), whose autograd it has.
  m.def(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight=None, str reduction='mean', "
      "int ignore_index=-100, float label_smoothing=0.) -> Tensor");

  // --- multi-tensor family (gradient clipping); see multi_tensor_math.h for the math.
  // One call covers a whole list of tensors on one device, dtypes mixed. Norms are float64 when
  // any tensor is float64, float32 otherwise, and stay on the device (no host sync).
  // ||all tensors as one vector||_p for p > 0 or inf, as a 0-d tensor.
  m.def("multi_tensor_norm(Tensor[] tensors, float p) -> Tensor");
  // ||tensors[i]||_p for each i, as a 1-d tensor of len(tensors).
  m.def("multi_tensor_norm_per_tensor(Tensor[] tensors, float p) -> Tensor");
  // tensors *= min(1, max_norm / (total_norm + 1e-6)), the coefficient computed on the device.
  m.def("multi_tensor_scale_(Tensor(a!)[] tensors, Tensor total_norm, float max_norm) -> ()");
  // tensors = clamp(tensors, lo, hi).
  m.def("multi_tensor_clamp_(Tensor(a!)[] tensors, float lo, float hi) -> ()");

  // --- linear family: out = act(input @ weight^T + bias), activation "none" or one of the above.
  // `preact` is the pre-activation, returned only when save_preact is set and backward needs it
  // (not for relu, relu6, sigmoid and tanh, whose derivative reads the output); otherwise it is
  // empty.
  m.def(
      "linear_fwd(Tensor input, Tensor weight, Tensor? bias, str activation, float p0, "
      "float p1, bool save_preact) -> (Tensor out, Tensor preact)");
  // `saved` is what backward reads: preact, or out for relu, relu6, sigmoid and tanh (ignored for
  // "none"). Gradients not asked for in output_mask come back empty.
  m.def(
      "linear_bwd(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, "
      "str activation, float p0, float p1, bool[3] output_mask) -> "
      "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // linear_bwd's first pass alone (activation not "none"): grad_preact = grad_output * act'(saved)
  // and, when want_bias, the bias gradient (empty otherwise).
  m.def(
      "linear_preact_bwd(Tensor grad_output, Tensor saved, str activation, float p0, float p1, "
      "bool want_bias) -> (Tensor grad_preact, Tensor grad_bias)");

  // --- gated family: y = f(gate) * up, f a row of the activation table (silu: SwiGLU, gelu or
  // gelu_tanh: GeGLU) with its p0, p1. The backward takes the forward's inputs, not f(gate).
  m.def("gated_fwd(Tensor gate, Tensor up, str activation, float p0=0., float p1=0.) -> Tensor");
  m.def(
      "gated_bwd(Tensor grad, Tensor gate, Tensor up, str activation, float p0=0., "
      "float p1=0.) -> (Tensor grad_gate, Tensor grad_up)");
}
