// Vectorized activation loops (at::vec), compiled once per ISA with CPU_CAPABILITY set by
// setup.py. The vector math is vec_math.h's (activation_math.h's lane for lane), the loops
// vec_loops.h's: every element, the last partial vector's included, takes the vector math.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "core/dispatch.h"
#include "cpu/activation_kernels.h"
#include "cpu/vec_loops.h"
#include "cpu/vec_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h

// --- entry points

void activation_fwd_kernel(c10::ScalarType dtype, const void* x, void* y, int64_t n, Activation act,
                           double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "activation_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      map_unary(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n,
                VecForward<A, T>{T(p0), T(p1)});
    });
  });
}

void activation_bwd_kernel(c10::ScalarType dtype, const void* grad, const void* saved,
                           void* grad_input, int64_t n, Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "activation_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      map_binary(static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(saved),
                 static_cast<scalar_t*>(grad_input), n, VecBackward<A, T>{T(p0), T(p1)});
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
