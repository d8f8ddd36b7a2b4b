// The activation family's kernel stubs (see stub.h): csrc/ops/activation.cpp holds the ops, which
// call these; cpu/activation.cpp and cuda/activation.cu register the kernels.
//
// Every kernel takes tensors laid out alike (elementwise.h's rule: non-overlapping and dense with
// equal strides, walked as flat arrays) of one float dtype, all of numel n > 0, and writes `out`
// (which may be `x` itself: elementwise, reading and writing alias safely).
#pragma once

#include <ATen/core/Tensor.h>

#include "core/stub.h"
#include "math/activation_math.h"

namespace backprop_ext {

// out = f(x)
using activation_fwd_fn = void (*)(const at::Tensor& x, at::Tensor& out, Activation act, double p0,
                                   double p1);
// grad_input = grad_output * f'(saved)
using activation_bwd_fn = void (*)(const at::Tensor& grad_output, const at::Tensor& saved,
                                   at::Tensor& grad_input, Activation act, double p0, double p1);

BACKPROP_EXT_DECLARE_STUB(activation_fwd_stub, activation_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(activation_bwd_stub, activation_bwd_fn);

}  // namespace backprop_ext
