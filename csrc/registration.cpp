// Every op schema of backprop_ext, in one place. Kernels are registered per device next to their
// code (csrc/cpu/*.cpp, csrc/cuda/*.cu); fake kernels for tracing live in backprop_ext/*.py.
//
// Conventions: forward and backward are separate ops; a backward op takes what its forward saved.
// Activations are named by string (see activation_math.h) with two float parameters p0, p1:
//   leaky_relu: p0 = negative_slope;  softplus: p0 = beta, p1 = threshold;  others: unused.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(backprop_ext, m) {
  // --- activation family
  m.def("activation_fwd(Tensor self, str activation, float p0=0., float p1=0.) -> Tensor");
  m.def("activation_fwd_(Tensor(a!) self, str activation, float p0=0., float p1=0.) -> ()");
  // `saved` is the forward's output for relu, sigmoid and tanh and its input otherwise.
  m.def("activation_bwd(Tensor grad_output, Tensor saved, str activation, float p0=0., "
        "float p1=0.) -> Tensor");

  // --- linear family: out = act(input @ weight^T + bias), activation "none" or one of the above.
  // `preact` is the pre-activation, returned only when save_preact is set and backward needs it
  // (not for relu, sigmoid and tanh, whose derivative reads the output); otherwise it is empty.
  m.def("linear_fwd(Tensor input, Tensor weight, Tensor? bias, str activation, float p0, "
        "float p1, bool save_preact) -> (Tensor out, Tensor preact)");
  // `saved` is what backward reads: preact, or out for relu, sigmoid and tanh (ignored for "none").
  // Gradients not asked for in output_mask come back empty.
  m.def("linear_bwd(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, "
        "str activation, float p0, float p1, bool[3] output_mask) -> "
        "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

// The compiled module only carries the registrations above; importing it runs them.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr,
                               nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
