// Vectorized activation loops (at::vec), compiled once per ISA with CPU_CAPABILITY set by
// setup.py. The vector math is vec_math.h's; the scalar tail calls activation_math.h's functors.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../dispatch.h"
#include "activation_kernels.h"
#include "vec_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

using at::vec::Vectorized;

// --- loops: full vectors of scalar_t, then a scalar tail. Half types widen to two float vectors.

template <typename scalar_t, typename ScalarOp, typename VecOp>
void unary_loop(const scalar_t* x, scalar_t* y, int64_t n, const ScalarOp& op, const VecOp& vop) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      vop(V::loadu(x + i)).store(y + i);
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(V::loadu(x + i));
      at::vec::convert_from_float<scalar_t>(vop(lo), vop(hi)).store(y + i);
    }
  }
  for (; i < n; ++i) y[i] = static_cast<scalar_t>(op(static_cast<opmath_t>(x[i])));
}

template <typename scalar_t, typename ScalarOp, typename VecOp>
void binary_loop(const scalar_t* a, const scalar_t* b, scalar_t* y, int64_t n, const ScalarOp& op,
                 const VecOp& vop) {
  using opmath_t = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      vop(V::loadu(a + i), V::loadu(b + i)).store(y + i);
    } else {
      auto [a_lo, a_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(a + i));
      auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(b + i));
      at::vec::convert_from_float<scalar_t>(vop(a_lo, b_lo), vop(a_hi, b_hi)).store(y + i);
    }
  }
  for (; i < n; ++i) {
    y[i] = static_cast<scalar_t>(op(static_cast<opmath_t>(a[i]), static_cast<opmath_t>(b[i])));
  }
}

}  // namespace

// --- entry points

void activation_fwd_kernel(c10::ScalarType dtype, const void* x, void* y, int64_t n,
                           Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "activation_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      unary_loop(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), n,
                 ActivationForward<A, T>{T(p0), T(p1)}, VecForward<A, T>{T(p0), T(p1)});
    });
  });
}

void activation_bwd_kernel(c10::ScalarType dtype, const void* grad, const void* saved,
                           void* grad_input, int64_t n, Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "activation_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      binary_loop(static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(saved),
                  static_cast<scalar_t*>(grad_input), n, ActivationBackward<A, T>{T(p0), T(p1)},
                  VecBackward<A, T>{T(p0), T(p1)});
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
