// The gated family's kernel stubs (see stub.h): csrc/ops/gated.cpp holds the ops, which call these;
// cpu/gated.cpp and cuda/gated.cu register the kernels.
//
// A gated unit multiplies an activation of one projection by another: y = f(gate) * up, f any row
// of the activation table (SwiGLU: silu; GeGLU: gelu or gelu_tanh). The math is the table's
// (ActivationMath<A>); the backward recomputes f(gate) rather than keeping it:
//   grad_gate = grad * up * f'(gate)      (f' from f(gate) for the rows that read their output)
//   grad_up   = grad * f(gate)
//
// Every kernel takes tensors laid out alike (elementwise.h's rule) of one float dtype, all of
// numel n > 0.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/stub.h"
#include "math/activation_math.h"

namespace backprop_ext {

// out = f(gate) * up
using gated_fwd_fn = void (*)(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out,
                              Activation act, double p0, double p1);
// (grad_gate, grad_up) as above
using gated_bwd_fn = void (*)(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up,
                              at::Tensor& grad_gate, at::Tensor& grad_up, Activation act, double p0,
                              double p1);

BACKPROP_EXT_DECLARE_STUB(gated_fwd_stub, gated_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(gated_bwd_stub, gated_bwd_fn);

// The math of one element, in the opmath type T, for the CUDA kernels (the CPU loops run its
// vector twin, cpu/gated_kernels.cpp): forward f(gate) * up; backward the pair above.
template <Activation A, typename T>
struct GatedForward {
  T p0, p1;
  C10_HOST_DEVICE T operator()(T gate, T up) const {
    return ActivationMath<A>::forward(gate, p0, p1) * up;
  }
};

template <Activation A, typename T>
struct GatedBackward {
  T p0, p1;
  // Returns grad_up; writes grad_gate.
  C10_HOST_DEVICE T operator()(T grad, T gate, T up, T& grad_gate) const {
    const T a = ActivationMath<A>::forward(gate, p0, p1);
    constexpr bool kReadsOutput = activation_saves_output(A);
    const T saved = kReadsOutput ? a : gate;
    grad_gate = ActivationMath<A>::backward(grad * up, saved, p0, p1);
    return grad * a;
  }
};

}  // namespace backprop_ext
