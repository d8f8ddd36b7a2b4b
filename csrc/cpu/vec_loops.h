// The vector loops every per-ISA kernel file shares (at::vec): widen to the opmath type, compute,
// narrow back. Include it only from a *_kernels.cpp: everything here lives in the CPU_CAPABILITY
// namespace that setup.py sets per build (see isa.h).
//
//   Lanes<scalar_t>         kSize opmath lanes loaded from / stored to scalar_t memory (a half
//                           type reads half a vector of its own and widens it to float)
//   for_each_vector(n, body)   body(i, k) per vector of scalar_t, the last one partial
//   map_unary(x, y, n, vop)    y[i] = vop(x[i]) over n elements, y may be x (in place)
//   map_binary(a, b, y, n, vop)  y[i] = vop(a[i], b[i])
//   map_ternary_to_pair(a, b, c, y, z, n, vop)  (y[i], z[i]) = vop(a[i], b[i], c[i])
// The maps take the vector op on Vectorized<opmath> and run every element through it, the last
// partial vector included; half types load a whole vector of scalar_t and widen it to two float
// vectors, which keeps the loads full width.
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

// Calls body(i, k) over [0, count) one vector of scalar_t at a time: k is the vector's size for
// every full vector and count's remainder for the last one. Every element goes through the same
// vector math: a scalar tail (libm's exp against Sleef's, a polynomial tanh against tanhf) would
// round differently from the lanes, so a value's result would depend on where it sits.
template <typename scalar_t, typename Body>
inline void for_each_vector(int64_t count, const Body& body) {
  constexpr int64_t kSize = Vectorized<scalar_t>::size();
  int64_t i = 0;
  for (; i + kSize <= count; i += kSize) body(i, kSize);
  if (i < count) body(i, count - i);
}

// The first k lanes of a vector at p (k == size: a plain load); the others hold zeros.
template <typename scalar_t>
inline Vectorized<scalar_t> load_n(const scalar_t* p, int64_t k) {
  return k == Vectorized<scalar_t>::size() ? Vectorized<scalar_t>::loadu(p)
                                           : Vectorized<scalar_t>::loadu(p, k);
}

// y[i] = vop(x[i]) over n elements, in opmath lanes.
template <typename scalar_t, typename VecOp>
void map_unary(const scalar_t* x, scalar_t* y, int64_t n, const VecOp& vop) {
  for_each_vector<scalar_t>(n, [&](int64_t i, int64_t k) {
    const Vectorized<scalar_t> v = load_n(x + i, k);
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      vop(v).store(y + i, k);
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(v);
      at::vec::convert_from_float<scalar_t>(vop(lo), vop(hi)).store(y + i, k);
    }
  });
}

// y[i] = vop(a[i], b[i]) over n elements, in opmath lanes.
template <typename scalar_t, typename VecOp>
void map_binary(const scalar_t* a, const scalar_t* b, scalar_t* y, int64_t n, const VecOp& vop) {
  for_each_vector<scalar_t>(n, [&](int64_t i, int64_t k) {
    const Vectorized<scalar_t> va = load_n(a + i, k), vb = load_n(b + i, k);
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      vop(va, vb).store(y + i, k);
    } else {
      auto [a_lo, a_hi] = at::vec::convert_to_float<scalar_t>(va);
      auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(vb);
      at::vec::convert_from_float<scalar_t>(vop(a_lo, b_lo), vop(a_hi, b_hi)).store(y + i, k);
    }
  });
}

// (y[i], z[i]) = vop(a[i], b[i], c[i]) over n elements, in opmath lanes; vop returns a pair.
template <typename scalar_t, typename VecOp>
void map_ternary_to_pair(const scalar_t* a, const scalar_t* b, const scalar_t* c, scalar_t* y,
                         scalar_t* z, int64_t n, const VecOp& vop) {
  for_each_vector<scalar_t>(n, [&](int64_t i, int64_t k) {
    const Vectorized<scalar_t> va = load_n(a + i, k), vb = load_n(b + i, k), vc = load_n(c + i, k);
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      const auto [vy, vz] = vop(va, vb, vc);
      vy.store(y + i, k);
      vz.store(z + i, k);
    } else {
      auto [a_lo, a_hi] = at::vec::convert_to_float<scalar_t>(va);
      auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(vb);
      auto [c_lo, c_hi] = at::vec::convert_to_float<scalar_t>(vc);
      const auto [y_lo, z_lo] = vop(a_lo, b_lo, c_lo);
      const auto [y_hi, z_hi] = vop(a_hi, b_hi, c_hi);
      at::vec::convert_from_float<scalar_t>(y_lo, y_hi).store(y + i, k);
      at::vec::convert_from_float<scalar_t>(z_lo, z_hi).store(z + i, k);
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
