// Activation math on at::vec vectors, for the per-ISA kernel files (activation_kernels.cpp,
// linear_kernels.cpp). Include it only from a *_kernels.cpp: everything here lives in the
// CPU_CAPABILITY namespace that setup.py sets per build. The math mirrors activation_math.h lane
// for lane, so a vector loop and its scalar tail (which calls those functors) agree to the
// rounding of the libm/Sleef functions used, except for float GELU, which trades the last
// digit for speed (see normal_cdf_gauss).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "../activation_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h

using at::vec::Vectorized;

// tanh for float lanes, cheaper than Sleef's vector tanh (which is several times the cost of
// its exp) at the same accuracy: an odd Taylor polynomial where |x| < 0.55 (the first omitted
// term is below 2e-8 relative, under float rounding), and 1 - 2 / (e^{2|x|} + 1) elsewhere, where
// tanh > 0.5 so the subtraction loses nothing. |x| is clamped where tanh rounds to 1.
inline Vectorized<float> fast_tanh(Vectorized<float> x) {
  using V = Vectorized<float>;
  const V a = at::vec::minimum(x.abs(), V(10.f));
  const V x2 = x * x;
  // tanh(x) = x (1 + x^2 (c1 + x^2 (c2 + ...))), Taylor coefficients of tanh.
  V p(-0.00059002744f);                          // -6404582/10854718875
  p = at::vec::fmadd(p, x2, V(0.0014558344f));   // 929569/638512875
  p = at::vec::fmadd(p, x2, V(-0.0035921280f));  // -21844/6081075
  p = at::vec::fmadd(p, x2, V(0.0088632355f));   // 1382/155925
  p = at::vec::fmadd(p, x2, V(-0.021869488f));   // -62/2835
  p = at::vec::fmadd(p, x2, V(0.053968254f));    // 17/315
  p = at::vec::fmadd(p, x2, V(-0.13333334f));    // -2/15
  p = at::vec::fmadd(p, x2, V(0.33333334f));     // 1/3
  const V small = x - x * x2 * p;
  const V large_abs = V(1.f) - V(2.f) / ((a + a).exp() + V(1.f));
  const V large = V::blendv(large_abs, V(0.f) - large_abs, x < V(0.f));
  const V t = V::blendv(large, small, a < V(0.55f));
  return V::blendv(t, x, x.isnan());  // NaN in, NaN out
}

// The standard normal cdf Phi(x) and the Gaussian e^{-x^2/2} for float lanes, from one exponential
// (GELU needs Phi, its derivative Phi + x phi with phi = e^{-x^2/2} / sqrt(2 pi)). Phi comes from
// Abramowitz & Stegun 7.1.26, the formula of ATen's own Vectorized<float>::erf (|erf error| <
// 1.5e-7), written as Phi(x) = 1 - q for x >= 0 and q for x < 0 with q = t P(t) e^{-x^2/2} / 2,
// so the left tail keeps its relative precision instead of cancelling in 1 + erf. The exponential
// is ATen's exp_u20, a few times cheaper than Sleef's: its error, a few 1e-7 relative at most in
// Phi, is of the size of the formula's own.
struct NormalCdfGauss {
  Vectorized<float> cdf, gauss;
};

inline NormalCdfGauss normal_cdf_gauss(Vectorized<float> x) {
  using V = Vectorized<float>;
  const V u = x.abs() * V(0.70710678118654752f);  // |x| / sqrt(2)
  const V t = V(1.f) / at::vec::fmadd(u, V(0.3275911f), V(1.f));
  V p(1.061405429f);
  p = at::vec::fmadd(p, t, V(-1.453152027f));
  p = at::vec::fmadd(p, t, V(1.421413741f));
  p = at::vec::fmadd(p, t, V(-0.284496736f));
  p = at::vec::fmadd(p, t, V(0.254829592f));
  const V gauss = (x * x * V(-0.5f)).exp_u20();
  const V q = V(0.5f) * t * p * gauss;
  return {V::blendv(V(1.f) - q, q, x < V(0.f)), gauss};
}

template <typename T>
Vectorized<T> vec_tanh(Vectorized<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    return fast_tanh(x);
  } else {
    return x.tanh();
  }
}

template <Activation A, typename T>
struct VecForward {
  using V = Vectorized<T>;
  T p0, p1;
  V operator()(V x) const {
    using C = math::GeluConstants<T>;
    const V zero(T(0)), one(T(1)), half(T(0.5));
    if constexpr (A == Activation::kRelu) {
      return V::blendv(x, zero, x < zero);
    } else if constexpr (A == Activation::kLeakyRelu) {
      return V::blendv(x * V(p0), x, x > zero);
    } else if constexpr (A == Activation::kGelu) {
      if constexpr (std::is_same_v<T, float>) {
        return x * normal_cdf_gauss(x).cdf;
      } else {
        return x * half * (one + (x * V(C::kAlpha)).erf());
      }
    } else if constexpr (A == Activation::kGeluTanh) {
      const V inner = V(C::kBeta) * (x + V(C::kKappa) * x * x * x);
      return half * x * (one + vec_tanh(inner));
    } else if constexpr (A == Activation::kSilu) {
      return x / (one + x.neg().exp());
    } else if constexpr (A == Activation::kSigmoid) {
      return one / (one + x.neg().exp());
    } else if constexpr (A == Activation::kTanh) {
      return vec_tanh(x);
    } else {  // kSoftplus
      const V bx = x * V(p0);
      return V::blendv(bx.exp().log1p() / V(p0), x, bx > V(p1));
    }
  }
};

template <Activation A, typename T>
struct VecBackward {
  using V = Vectorized<T>;
  T p0, p1;
  V operator()(V g, V s) const {
    using C = math::GeluConstants<T>;
    const V zero(T(0)), one(T(1)), half(T(0.5));
    if constexpr (A == Activation::kRelu) {
      return V::blendv(g, zero, s <= zero);
    } else if constexpr (A == Activation::kLeakyRelu) {
      return V::blendv(g * V(p0), g, s > zero);
    } else if constexpr (A == Activation::kGelu) {
      if constexpr (std::is_same_v<T, float>) {
        const auto [cdf, gauss] = normal_cdf_gauss(s);
        return g * (cdf + s * V(C::kPdf) * gauss);
      } else {
        const V cdf = half * (one + (s * V(C::kAlpha)).erf());
        const V pdf = V(C::kPdf) * (V(T(-0.5)) * s * s).exp();
        return g * (cdf + s * pdf);
      }
    } else if constexpr (A == Activation::kGeluTanh) {
      const V s2 = s * s;
      const V t = vec_tanh(V(C::kBeta) * (s + V(C::kKappa) * s2 * s));
      const V d_left = half * (one + t);
      const V d_right = half * s * (one - t * t) * V(C::kBeta) * (one + V(T(3) * C::kKappa) * s2);
      return g * (d_left + d_right);
    } else if constexpr (A == Activation::kSilu) {
      const V sig = one / (one + s.neg().exp());
      return g * sig * (one + s * (one - sig));
    } else if constexpr (A == Activation::kSigmoid) {
      return g * (one - s) * s;
    } else if constexpr (A == Activation::kTanh) {
      return g * (one - s * s);
    } else {  // kSoftplus
      const V bx = s * V(p0);
      const V z = bx.exp();
      return V::blendv(g * z / (z + one), g, bx > V(p1));
    }
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
