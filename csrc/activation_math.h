// Activation math shared by the CPU and CUDA kernels (and by linear's fused epilogues).
//
//   relu(x)            = max(x, 0)                         f'  from the output y: y > 0
//   leaky_relu(x; a)   = x > 0 ? x : a x                   f'  from x
//   gelu(x)            = x Phi(x)                          f'  = Phi(x) + x phi(x)
//   gelu_tanh(x)       = x/2 (1 + tanh(u)),  u = kBeta (x + kKappa x^3)
//                                                          f'  = (1 + t)/2 + x/2 (1 - t^2) u'
//   silu(x)            = x sigmoid(x)                      f'  = s (1 + x (1 - s))
//   sigmoid(x)         = 1 / (1 + e^-x)                    f'  from the output y: y (1 - y)
//   tanh(x)                                                f'  from the output y: 1 - y^2
//   softplus(x; b, th) = b x > th ? x : log1p(e^(b x)) / b f'  = sigmoid(b x), or 1 past th
//
// All math runs in T = at::opmath_type<scalar_t> (float for the half types). The functors are
// C10_HOST_DEVICE so that one definition serves the scalar CPU tail and every CUDA kernel.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>

namespace backprop_ext {

enum class Activation : int8_t {
  kRelu,
  kLeakyRelu,
  kGelu,      // exact, erf based
  kGeluTanh,  // the tanh approximation
  kSilu,
  kSigmoid,
  kTanh,
  kSoftplus,
};

// Parameters travel as two doubles: leaky_relu uses p0 = negative_slope; softplus uses
// p0 = beta and p1 = threshold; the others use neither.
inline Activation parse_activation(c10::string_view name) {
  if (name == "relu") return Activation::kRelu;
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "silu") return Activation::kSilu;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "tanh") return Activation::kTanh;
  if (name == "softplus") return Activation::kSoftplus;
  TORCH_CHECK(false, "backprop_ext: unknown activation '", name,
              "'; expected one of relu, leaky_relu, gelu, gelu_tanh, silu, sigmoid, tanh, softplus");
}

// True where the backward reads the forward's output rather than its input.
inline bool activation_saves_output(Activation a) {
  return a == Activation::kRelu || a == Activation::kSigmoid || a == Activation::kTanh;
}

namespace math {

// Precise libm/CUDA math on each opmath type (no fast-math anywhere: results must match torch).
C10_HOST_DEVICE inline float exp(float x) { return ::expf(x); }
C10_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
C10_HOST_DEVICE inline float erf(float x) { return ::erff(x); }
C10_HOST_DEVICE inline double erf(double x) { return ::erf(x); }
C10_HOST_DEVICE inline float tanh(float x) { return ::tanhf(x); }
C10_HOST_DEVICE inline double tanh(double x) { return ::tanh(x); }
C10_HOST_DEVICE inline float log(float x) { return ::logf(x); }
C10_HOST_DEVICE inline double log(double x) { return ::log(x); }
C10_HOST_DEVICE inline float log1p(float x) { return ::log1pf(x); }
C10_HOST_DEVICE inline double log1p(double x) { return ::log1p(x); }

template <typename T>
struct GeluConstants {
  static constexpr T kAlpha = T(0.70710678118654752440);  // 1 / sqrt(2)
  static constexpr T kPdf = T(0.39894228040143267794);    // 1 / sqrt(2 pi)
  static constexpr T kBeta = T(0.79788456080286535588);   // sqrt(2 / pi)
  static constexpr T kKappa = T(0.044715);
};

}  // namespace math

// Forward: y = f(x).
template <Activation A, typename T>
struct ActivationForward {
  T p0, p1;
  C10_HOST_DEVICE T operator()(T x) const {
    using C = math::GeluConstants<T>;
    if constexpr (A == Activation::kRelu) {
      return x < T(0) ? T(0) : x;  // NaN stays NaN
    } else if constexpr (A == Activation::kLeakyRelu) {
      return x > T(0) ? x : x * p0;
    } else if constexpr (A == Activation::kGelu) {
      return x * T(0.5) * (T(1) + math::erf(x * C::kAlpha));
    } else if constexpr (A == Activation::kGeluTanh) {
      const T inner = C::kBeta * (x + C::kKappa * x * x * x);
      return T(0.5) * x * (T(1) + math::tanh(inner));
    } else if constexpr (A == Activation::kSilu) {
      return x / (T(1) + math::exp(-x));
    } else if constexpr (A == Activation::kSigmoid) {
      return T(1) / (T(1) + math::exp(-x));
    } else if constexpr (A == Activation::kTanh) {
      return math::tanh(x);
    } else {  // kSoftplus
      const T bx = x * p0;
      return bx > p1 ? x : math::log1p(math::exp(bx)) / p0;
    }
  }
};

// Backward: dx = dy * f'(.) where the argument is the forward's output for relu, sigmoid and tanh
// (activation_saves_output) and its input otherwise.
template <Activation A, typename T>
struct ActivationBackward {
  T p0, p1;
  C10_HOST_DEVICE T operator()(T g, T s) const {
    using C = math::GeluConstants<T>;
    if constexpr (A == Activation::kRelu) {
      return s <= T(0) ? T(0) : g;
    } else if constexpr (A == Activation::kLeakyRelu) {
      return s > T(0) ? g : g * p0;
    } else if constexpr (A == Activation::kGelu) {
      const T cdf = T(0.5) * (T(1) + math::erf(s * C::kAlpha));
      const T pdf = C::kPdf * math::exp(T(-0.5) * s * s);
      return g * (cdf + s * pdf);
    } else if constexpr (A == Activation::kGeluTanh) {
      const T s2 = s * s;
      const T t = math::tanh(C::kBeta * (s + C::kKappa * s2 * s));
      const T d_left = T(0.5) * (T(1) + t);  // d/dx of x/2, times (1 + t)
      const T d_right = T(0.5) * s * (T(1) - t * t) * C::kBeta * (T(1) + T(3) * C::kKappa * s2);
      return g * (d_left + d_right);
    } else if constexpr (A == Activation::kSilu) {
      const T sig = T(1) / (T(1) + math::exp(-s));
      return g * sig * (T(1) + s * (T(1) - sig));
    } else if constexpr (A == Activation::kSigmoid) {
      return g * (T(1) - s) * s;
    } else if constexpr (A == Activation::kTanh) {
      return g * (T(1) - s * s);
    } else {  // kSoftplus
      const T bx = s * p0;
      if (bx > p1) return g;
      const T z = math::exp(bx);
      return g * z / (z + T(1));
    }
  }
};

// Calls f(std::integral_constant-like tag) with the activation as a compile-time constant, so a
// kernel is instantiated once per activation and the switch happens once per launch.
template <Activation A>
struct ActivationTag {
  static constexpr Activation value = A;
};

template <typename F>
inline void visit_activation(Activation a, F&& f) {
  switch (a) {
    case Activation::kRelu: return f(ActivationTag<Activation::kRelu>{});
    case Activation::kLeakyRelu: return f(ActivationTag<Activation::kLeakyRelu>{});
    case Activation::kGelu: return f(ActivationTag<Activation::kGelu>{});
    case Activation::kGeluTanh: return f(ActivationTag<Activation::kGeluTanh>{});
    case Activation::kSilu: return f(ActivationTag<Activation::kSilu>{});
    case Activation::kSigmoid: return f(ActivationTag<Activation::kSigmoid>{});
    case Activation::kTanh: return f(ActivationTag<Activation::kTanh>{});
    case Activation::kSoftplus: return f(ActivationTag<Activation::kSoftplus>{});
  }
}

}  // namespace backprop_ext
