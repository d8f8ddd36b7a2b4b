// Vectorized gated-unit loops (at::vec), compiled once per ISA with CPU_CAPABILITY set by
// setup.py. The activation's vector math is vec_math.h's (activation_math.h's lane for lane), the
// loops vec_loops.h's: every element, the last partial vector's included, takes the vector math.
//
//   forward   y = f(gate) * up
//   backward  grad_gate = grad * up * f'(gate), grad_up = grad * f(gate), f(gate) recomputed
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <utility>

#include "core/dispatch.h"
#include "cpu/gated_kernels.h"
#include "cpu/vec_loops.h"
#include "cpu/vec_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h

// --- the vector math: the activation table's, bound to its parameters

template <Activation A, typename T>
struct VecGatedForward {
  T p0, p1;
  Vectorized<T> operator()(Vectorized<T> gate, Vectorized<T> up) const {
    return VecActivationMath<A>::forward(gate, p0, p1) * up;
  }
};

template <Activation A, typename T>
struct VecGatedBackward {
  T p0, p1;
  // (grad_gate, grad_up)
  std::pair<Vectorized<T>, Vectorized<T>> operator()(Vectorized<T> grad, Vectorized<T> gate,
                                                     Vectorized<T> up) const {
    const Vectorized<T> a = VecActivationMath<A>::forward(gate, p0, p1);
    constexpr bool kReadsOutput = activation_saves_output(A);
    const Vectorized<T> saved = kReadsOutput ? a : gate;
    return {VecActivationMath<A>::backward(grad * up, saved, p0, p1), grad * a};
  }
};

// --- entry points

void gated_fwd_kernel(c10::ScalarType dtype, const void* gate, const void* up, void* out, int64_t n,
                      Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "gated_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      map_binary(static_cast<const scalar_t*>(gate), static_cast<const scalar_t*>(up),
                 static_cast<scalar_t*>(out), n, VecGatedForward<A, T>{T(p0), T(p1)});
    });
  });
}

void gated_bwd_kernel(c10::ScalarType dtype, const void* grad, const void* gate, const void* up,
                      void* grad_gate, void* grad_up, int64_t n, Activation act, double p0,
                      double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "gated_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      map_ternary_to_pair(static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(gate),
                          static_cast<const scalar_t*>(up), static_cast<scalar_t*>(grad_gate),
                          static_cast<scalar_t*>(grad_up), n, VecGatedBackward<A, T>{T(p0), T(p1)});
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
