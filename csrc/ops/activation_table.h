// The activation table: the one list of the activations backprop_ext computes. Everything else is
// derived from it: in C++ the Activation enum, the name lookup and the compile-time dispatch
// (activation_math.h); in Python, through backprop_ext._C.activation_table(), the op names, the
// torch.nn.functional-shaped functions, the torch.nn Modules, linear's `activation` argument,
// convert()'s mapping and the test cases (backprop_ext/activation.py).
//
// Adding an activation = one row here + its math: ActivationMath<kName> (activation_math.h), its
// vector form if it has a fast one (cpu/vec_math.h) and its second derivative
// (backprop_ext/activation.py, _SECOND_DERIVATIVES). tests/test_activation.py checks that the
// pieces agree.
//
//   X(Enum, name, reads, signature, module)
//
//   Enum       Activation::k<Enum>.
//   name       the activation string the ops take: activation_fwd(x, name, p0, p1).
//   reads      what the backward op takes as `saved`: kOutput where f' is a function of y = f(x)
//              (forward then keeps y, which also lets in-place forms run under autograd), kInput
//              otherwise.
//   signature  the torch.nn.functional call the row computes, in Python syntax. Its float
//              parameters travel to the kernels as p0 and p1, in order; a string parameter selects
//              the row (gelu's approximate); `inplace` means torch offers an in-place form. A
//              function torch.nn.functional lacks (quick_gelu) is ours alone, tested against the
//              formula in backprop_ext/testing.py's REFERENCES.
//   module     the torch.nn Module computing it, whose attributes are named like the parameters
//              (one torch.nn lacks is a plain torch.nn.Module of ours with those attributes).
#pragma once

// clang-format off
#define BACKPROP_EXT_ACTIVATIONS(X)                                                             \
  X(Relu,      "relu",       kOutput, "relu(input, inplace=False)",                  "ReLU")      \
  X(LeakyRelu, "leaky_relu", kInput,  "leaky_relu(input, negative_slope=0.01, inplace=False)",   \
                                                                                     "LeakyReLU") \
  X(Gelu,      "gelu",       kInput,  "gelu(input, approximate='none')",             "GELU")      \
  X(GeluTanh,  "gelu_tanh",  kInput,  "gelu(input, approximate='tanh')",             "GELU")      \
  X(Silu,      "silu",       kInput,  "silu(input, inplace=False)",                  "SiLU")      \
  X(Sigmoid,   "sigmoid",    kOutput, "sigmoid(input)",                              "Sigmoid")   \
  X(Tanh,      "tanh",       kOutput, "tanh(input)",                                 "Tanh")      \
  X(Softplus,  "softplus",   kInput,  "softplus(input, beta=1.0, threshold=20.0)",   "Softplus")  \
  X(Hardsigmoid, "hardsigmoid", kInput, "hardsigmoid(input, inplace=False)",         "Hardsigmoid") \
  X(Hardswish, "hardswish",  kInput,  "hardswish(input, inplace=False)",             "Hardswish") \
  X(Relu6,     "relu6",      kOutput, "relu6(input, inplace=False)",                 "ReLU6")     \
  X(Elu,       "elu",        kInput,  "elu(input, alpha=1.0, inplace=False)",        "ELU")       \
  X(Selu,      "selu",       kInput,  "selu(input, inplace=False)",                  "SELU")      \
  X(Mish,      "mish",       kInput,  "mish(input, inplace=False)",                  "Mish")      \
  X(QuickGelu, "quick_gelu", kInput,  "quick_gelu(input)",                           "QuickGELU")
// clang-format on
