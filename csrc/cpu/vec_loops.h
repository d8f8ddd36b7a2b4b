// The vector loops every per-ISA kernel file shares (at::vec): widen to the opmath type, compute,
// narrow back. Include it only from a *_kernels.cpp: everything here lives in the CPU_CAPABILITY
// namespace that setup.py sets per build (see isa.h).
//
//   Lanes<scalar_t>         kSize opmath lanes loaded from / stored to scalar_t memory (a half
//                           type reads half a vector of its own and widens it to float)
//   map_unary(x, y, n, ...) y[i] = op(x[i]) over n elements, y may be x (in place)
//   map_binary(a, b, y, n, ...)  y[i] = op(a[i], b[i])
// The maps take the scalar op (for the tail, and the reference the vector op mirrors lane for
// lane) and the vector op on Vectorized<opmath>; half types load a whole vector of scalar_t and
// widen it to two float vectors, which keeps the loads full width.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h

using at::vec::Vectorized;

template <typename scalar_t>
struct Lanes {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<T>;
  static constexpr int64_t kSize = V::size();
  static constexpr bool kWiden = !std::is_same_v<scalar_t, T>;

  static V load(const scalar_t* p) {
    if constexpr (kWiden) {
      V out;
      at::vec::load_to_float<scalar_t>(p, out);
      return out;
    } else {
      return V::loadu(p);
    }
  }
  // The first n (< kSize) lanes; the others hold zeros and must not be stored.
  static V load(const scalar_t* p, int64_t n) {
    if constexpr (kWiden) {
      return std::get<0>(at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p, n)));
    } else {
      return V::loadu(p, n);
    }
  }
  static void store(scalar_t* p, V v, int64_t n = kSize) {
    if constexpr (kWiden) {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
    } else {
      v.store(p, n);
    }
  }
};

template <typename scalar_t, typename ScalarOp, typename VecOp>
void map_unary(const scalar_t* x, scalar_t* y, int64_t n, const ScalarOp& op, const VecOp& vop) {
  using T = at::opmath_type<scalar_t>;
  using VS = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + VS::size() <= n; i += VS::size()) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      vop(VS::loadu(x + i)).store(y + i);
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i));
      at::vec::convert_from_float<scalar_t>(vop(lo), vop(hi)).store(y + i);
    }
  }
  for (; i < n; ++i) y[i] = static_cast<scalar_t>(op(static_cast<T>(x[i])));
}

template <typename scalar_t, typename ScalarOp, typename VecOp>
void map_binary(const scalar_t* a, const scalar_t* b, scalar_t* y, int64_t n, const ScalarOp& op,
                const VecOp& vop) {
  using T = at::opmath_type<scalar_t>;
  using VS = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + VS::size() <= n; i += VS::size()) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      vop(VS::loadu(a + i), VS::loadu(b + i)).store(y + i);
    } else {
      auto [a_lo, a_hi] = at::vec::convert_to_float<scalar_t>(VS::loadu(a + i));
      auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(VS::loadu(b + i));
      at::vec::convert_from_float<scalar_t>(vop(a_lo, b_lo), vop(a_hi, b_hi)).store(y + i);
    }
  }
  for (; i < n; ++i) {
    y[i] = static_cast<scalar_t>(op(static_cast<T>(a[i]), static_cast<T>(b[i])));
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
