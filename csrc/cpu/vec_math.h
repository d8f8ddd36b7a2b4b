// Activation math on at::vec vectors, for the per-ISA kernel files (activation_kernels.cpp,
// linear_kernels.cpp): the vector form of activation_math.h's ActivationMath, one specialization
// per activation. Include it only from a *_kernels.cpp: everything here lives in the
// CPU_CAPABILITY namespace that setup.py sets per build. The math mirrors activation_math.h lane
// for lane, so a vector loop and its scalar tail (which calls those functors) agree to the
// rounding of the libm/Sleef functions used, except for float GELU, which trades the last
// digit for speed (see normal_cdf_gauss).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

#include "math/activation_math.h"

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

// --- the vector form of each activation's math (activation_math.h), lane for lane.
//
// VecActivationMath<A>::forward(x, p0, p1) and ::backward(g, s, p0, p1) on Vectorized<T>. An
// activation without a specialization runs its scalar math lane by lane: correct, not fast.

template <Activation A>
struct VecActivationMath {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T p0, T p1) {
    return map_lanes(x, [&](T v) { return ActivationMath<A>::forward(v, p0, p1); });
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> s, T p0, T p1) {
    return map_lanes(g, s, [&](T a, T b) { return ActivationMath<A>::backward(a, b, p0, p1); });
  }

 private:
  template <typename T, typename F>
  static Vectorized<T> map_lanes(Vectorized<T> x, const F& f) {
    alignas(64) T lanes[Vectorized<T>::size()];
    x.store(lanes);
    for (auto& v : lanes) v = f(v);
    return Vectorized<T>::loadu(lanes);
  }
  template <typename T, typename F>
  static Vectorized<T> map_lanes(Vectorized<T> a, Vectorized<T> b, const F& f) {
    alignas(64) T la[Vectorized<T>::size()], lb[Vectorized<T>::size()];
    a.store(la);
    b.store(lb);
    for (int i = 0; i < Vectorized<T>::size(); ++i) la[i] = f(la[i], lb[i]);
    return Vectorized<T>::loadu(la);
  }
};

template <>
struct VecActivationMath<Activation::kRelu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    const Vectorized<T> zero(T(0));
    return Vectorized<T>::blendv(x, zero, x < zero);
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> y, T, T) {
    const Vectorized<T> zero(T(0));
    return Vectorized<T>::blendv(g, zero, y <= zero);
  }
};

template <>
struct VecActivationMath<Activation::kLeakyRelu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T slope, T) {
    return Vectorized<T>::blendv(x * Vectorized<T>(slope), x, x > Vectorized<T>(T(0)));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T slope, T) {
    return Vectorized<T>::blendv(g * Vectorized<T>(slope), g, x > Vectorized<T>(T(0)));
  }
};

template <>
struct VecActivationMath<Activation::kGelu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    if constexpr (std::is_same_v<T, float>) {
      return x * normal_cdf_gauss(x).cdf;
    } else {
      return x * V(T(0.5)) * (V(T(1)) + (x * V(GeluConstants<T>::kAlpha)).erf());
    }
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    using C = GeluConstants<T>;
    if constexpr (std::is_same_v<T, float>) {
      const auto [cdf, gauss] = normal_cdf_gauss(x);
      return g * (cdf + x * V(C::kPdf) * gauss);
    } else {
      const V cdf = V(T(0.5)) * (V(T(1)) + (x * V(C::kAlpha)).erf());
      const V pdf = V(C::kPdf) * (V(T(-0.5)) * x * x).exp();
      return g * (cdf + x * pdf);
    }
  }
};

template <>
struct VecActivationMath<Activation::kGeluTanh> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    using C = GeluConstants<T>;
    const V inner = V(C::kBeta) * (x + V(C::kKappa) * x * x * x);
    return V(T(0.5)) * x * (V(T(1)) + vec_tanh(inner));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    using C = GeluConstants<T>;
    const V one(T(1)), half(T(0.5));
    const V x2 = x * x;
    const V t = vec_tanh(V(C::kBeta) * (x + V(C::kKappa) * x2 * x));
    const V d_left = half * (one + t);
    const V d_right = half * x * (one - t * t) * V(C::kBeta) * (one + V(T(3) * C::kKappa) * x2);
    return g * (d_left + d_right);
  }
};

template <>
struct VecActivationMath<Activation::kSilu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    return x / (Vectorized<T>(T(1)) + x.neg().exp());
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    const Vectorized<T> one(T(1));
    const Vectorized<T> sig = one / (one + x.neg().exp());
    return g * sig * (one + x * (one - sig));
  }
};

template <>
struct VecActivationMath<Activation::kSigmoid> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    const Vectorized<T> one(T(1));
    return one / (one + x.neg().exp());
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> y, T, T) {
    return g * (Vectorized<T>(T(1)) - y) * y;
  }
};

template <>
struct VecActivationMath<Activation::kTanh> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    return vec_tanh(x);
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> y, T, T) {
    return g * (Vectorized<T>(T(1)) - y * y);
  }
};

template <>
struct VecActivationMath<Activation::kSoftplus> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T beta, T threshold) {
    using V = Vectorized<T>;
    const V bx = x * V(beta);
    return V::blendv(bx.exp().log1p() / V(beta), x, bx > V(threshold));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T beta, T threshold) {
    using V = Vectorized<T>;
    const V bx = x * V(beta);
    const V z = bx.exp();
    return V::blendv(g * z / (z + V(T(1))), g, bx > V(threshold));
  }
};

template <>
struct VecActivationMath<Activation::kHardsigmoid> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    // minimum/maximum propagate NaN.
    return at::vec::minimum(at::vec::maximum(x + V(T(3)), V(T(0))), V(T(6))) / V(T(6));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V inside = (x > V(T(-3))) & (x < V(T(3)));
    return V::blendv(V(T(0)), g * V(T(1.0f / 6.0f)), inside);  // torch's float 1/6
  }
};

template <>
struct VecActivationMath<Activation::kHardswish> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V r = at::vec::minimum(at::vec::maximum(x + V(T(3)), V(T(0))), V(T(6)));  // NaN stays
    return x * r / V(T(6));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V upper = V::blendv(g * (x / V(T(3)) + V(T(0.5))), g, x >= V(T(3)));
    return V::blendv(upper, V(T(0)), x <= V(T(-3)));
  }
};

template <>
struct VecActivationMath<Activation::kRelu6> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    return at::vec::minimum(at::vec::maximum(x, V(T(0))), V(T(6)));  // NaN stays
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> y, T, T) {
    using V = Vectorized<T>;
    return V::blendv(V(T(0)), g, (y > V(T(0))) & (y < V(T(6))));
  }
};

template <typename T>
Vectorized<T> vec_elu_forward(Vectorized<T> x, T alpha, T scale) {
  using V = Vectorized<T>;
  return V::blendv(x.expm1() * V(alpha * scale), x * V(scale), x > V(T(0)));
}

template <typename T>
Vectorized<T> vec_elu_backward(Vectorized<T> g, Vectorized<T> x, T alpha, T scale) {
  using V = Vectorized<T>;
  return V::blendv(g * V(alpha * scale) * x.exp(), g * V(scale), x > V(T(0)));
}

template <>
struct VecActivationMath<Activation::kElu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T alpha, T) {
    return vec_elu_forward(x, alpha, T(1));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T alpha, T) {
    return vec_elu_backward(g, x, alpha, T(1));
  }
};

template <>
struct VecActivationMath<Activation::kSelu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    return vec_elu_forward(x, SeluConstants<T>::kAlpha, SeluConstants<T>::kScale);
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    return vec_elu_backward(g, x, SeluConstants<T>::kAlpha, SeluConstants<T>::kScale);
  }
};

template <>
struct VecActivationMath<Activation::kMish> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V e = at::vec::minimum(x, V(T(20))).exp();  // minimum keeps NaN
    const V n = e * (e + V(T(2)));
    return x * (n / (n + V(T(2))));
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V one(T(1));
    const V e = at::vec::minimum(x, V(T(20))).exp();
    const V n = e * (e + V(T(2)));
    const V t = n / (n + V(T(2)));
    const V sig = e / (one + e);
    return g * (t + x * sig * (one - t * t));
  }
};

template <>
struct VecActivationMath<Activation::kQuickGelu> {
  template <typename T>
  static Vectorized<T> forward(Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    return x / (V(T(1)) + (x * V(-QuickGeluConstants<T>::kAlpha)).exp());
  }
  template <typename T>
  static Vectorized<T> backward(Vectorized<T> g, Vectorized<T> x, T, T) {
    using V = Vectorized<T>;
    const V one(T(1)), alpha(QuickGeluConstants<T>::kAlpha);
    const V s = one / (one + (x * V(-QuickGeluConstants<T>::kAlpha)).exp());
    return g * s * (one + alpha * x * (one - s));
  }
};

// --- the functors the vector loops take: the vector math of A with its parameters bound

template <Activation A, typename T>
struct VecForward {
  T p0, p1;
  Vectorized<T> operator()(Vectorized<T> x) const {
    return VecActivationMath<A>::forward(x, p0, p1);
  }
};

template <Activation A, typename T>
struct VecBackward {
  T p0, p1;
  Vectorized<T> operator()(Vectorized<T> g, Vectorized<T> s) const {
    return VecActivationMath<A>::backward(g, s, p0, p1);
  }
};

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
