// Activation math shared by the CPU and CUDA kernels (and by linear's fused epilogues).
//
// The list of activations is activation_table.h's; this header derives the enum, the name lookup
// and the compile-time dispatch from it, and holds each activation's math: ActivationMath<A>, with
//   forward(x, p0, p1)      y = f(x)
//   backward(g, s, p0, p1)  g * f'(.) where s is y for the rows that read the output (relu,
//                           sigmoid, tanh) and x for the others
// in T = at::opmath_type<scalar_t> (float for the half types). The functions are C10_HOST_DEVICE
// so that one definition serves the scalar CPU tail and every CUDA kernel; the CPU vector loops
// mirror them lane for lane (cpu/vec_math.h).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include "activation_table.h"
#include "math.h"

namespace backprop_ext {

#define BACKPROP_EXT_ENUM(Enum, name, reads, signature, module) k##Enum,
enum class Activation : int8_t { BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_ENUM) };
#undef BACKPROP_EXT_ENUM

// What the backward op takes as `saved` (see activation_table.h).
enum class ActivationReads : int8_t { kInput, kOutput };

// The activation named `name` in the table.
inline Activation activation_from_name(c10::string_view name) {
#define BACKPROP_EXT_MATCH(Enum, row_name, reads, signature, module) \
  if (name == row_name) return Activation::k##Enum;
  BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_MATCH)
#undef BACKPROP_EXT_MATCH
#define BACKPROP_EXT_NAME(Enum, row_name, reads, signature, module) " " row_name
  TORCH_CHECK(false, "backprop_ext: unknown activation '", name, "'; expected one of:",
              BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_NAME));
#undef BACKPROP_EXT_NAME
}

// True where the backward reads the forward's output rather than its input.
inline bool activation_saves_output(Activation a) {
  switch (a) {
#define BACKPROP_EXT_CASE(Enum, name, reads, signature, module) \
  case Activation::k##Enum:                                     \
    return ActivationReads::reads == ActivationReads::kOutput;
    BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_CASE)
#undef BACKPROP_EXT_CASE
  }
  return false;
}

// Calls f(tag) with the activation as a compile-time constant, decltype(tag)::value, so that a
// kernel is instantiated once per activation and the switch runs once per launch.
template <Activation A>
struct ActivationTag {
  static constexpr Activation value = A;
};

template <typename F>
inline void visit_activation(Activation a, F&& f) {
  switch (a) {
#define BACKPROP_EXT_CASE(Enum, name, reads, signature, module) \
  case Activation::k##Enum:                                     \
    return f(ActivationTag<Activation::k##Enum>{});
    BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_CASE)
#undef BACKPROP_EXT_CASE
  }
}

template <typename T>
struct GeluConstants {
  static constexpr T kAlpha = T(0.70710678118654752440);  // 1 / sqrt(2)
  static constexpr T kPdf = T(0.39894228040143267794);    // 1 / sqrt(2 pi)
  static constexpr T kBeta = T(0.79788456080286535588);   // sqrt(2 / pi)
  static constexpr T kKappa = T(0.044715);
};

// --- the math of each row

template <Activation A>
struct ActivationMath;

// relu(x) = max(x, 0); f' from the output y: y > 0.
template <>
struct ActivationMath<Activation::kRelu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return x < T(0) ? T(0) : x;  // NaN stays NaN
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y, T, T) {
    return y <= T(0) ? T(0) : g;
  }
};

// leaky_relu(x; a) = x > 0 ? x : a x, a = p0.
template <>
struct ActivationMath<Activation::kLeakyRelu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T slope, T) {
    return x > T(0) ? x : x * slope;
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T slope, T) {
    return x > T(0) ? g : g * slope;
  }
};

// gelu(x) = x Phi(x);  f' = Phi(x) + x phi(x).
template <>
struct ActivationMath<Activation::kGelu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return x * T(0.5) * (T(1) + math::erf(x * GeluConstants<T>::kAlpha));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    using C = GeluConstants<T>;
    const T cdf = T(0.5) * (T(1) + math::erf(x * C::kAlpha));
    const T pdf = C::kPdf * math::exp(T(-0.5) * x * x);
    return g * (cdf + x * pdf);
  }
};

// gelu_tanh(x) = x/2 (1 + tanh(u)), u = kBeta (x + kKappa x^3);
// f' = (1 + t)/2 + x/2 (1 - t^2) u'  with t = tanh(u).
template <>
struct ActivationMath<Activation::kGeluTanh> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    using C = GeluConstants<T>;
    const T inner = C::kBeta * (x + C::kKappa * x * x * x);
    return T(0.5) * x * (T(1) + math::tanh(inner));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    using C = GeluConstants<T>;
    const T x2 = x * x;
    const T t = math::tanh(C::kBeta * (x + C::kKappa * x2 * x));
    const T d_left = T(0.5) * (T(1) + t);  // d/dx of x/2, times (1 + t)
    const T d_right = T(0.5) * x * (T(1) - t * t) * C::kBeta * (T(1) + T(3) * C::kKappa * x2);
    return g * (d_left + d_right);
  }
};

// silu(x) = x sigmoid(x);  f' = s (1 + x (1 - s)).
template <>
struct ActivationMath<Activation::kSilu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return x / (T(1) + math::exp(-x));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    const T sig = T(1) / (T(1) + math::exp(-x));
    return g * sig * (T(1) + x * (T(1) - sig));
  }
};

// sigmoid(x) = 1 / (1 + e^-x);  f' from the output y: y (1 - y).
template <>
struct ActivationMath<Activation::kSigmoid> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return T(1) / (T(1) + math::exp(-x));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y, T, T) {
    return g * (T(1) - y) * y;
  }
};

// tanh(x);  f' from the output y: 1 - y^2.
template <>
struct ActivationMath<Activation::kTanh> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return math::tanh(x);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y, T, T) {
    return g * (T(1) - y * y);
  }
};

// softplus(x; b, th) = b x > th ? x : log1p(e^(b x)) / b;  f' = sigmoid(b x), or 1 past th.
template <>
struct ActivationMath<Activation::kSoftplus> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T beta, T threshold) {
    const T bx = x * beta;
    return bx > threshold ? x : math::log1p(math::exp(bx)) / beta;
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T beta, T threshold) {
    const T bx = x * beta;
    if (bx > threshold) return g;
    const T z = math::exp(bx);
    return g * z / (z + T(1));
  }
};

// hardsigmoid(x) = relu6(x + 3) / 6;  f' = 1/6 strictly between -3 and 3, else 0 (NaN: 0). The
// backward reads x, not y: y reaches 1 for x a rounding below 3, where torch's f' is still 1/6.
// torch's 1/6 is a float constant in every dtype (1/6 rounded to float: 3e-8 off in float64).
template <>
struct ActivationMath<Activation::kHardsigmoid> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    const T r = x + T(3);
    return (r < T(0) ? T(0) : r > T(6) ? T(6) : r) / T(6);  // NaN stays NaN
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    return x > T(-3) && x < T(3) ? g * T(1.0f / 6.0f) : T(0);
  }
};

// --- the functors the kernels take: the math of A with its parameters bound

template <Activation A, typename T>
struct ActivationForward {
  T p0, p1;
  C10_HOST_DEVICE T operator()(T x) const { return ActivationMath<A>::forward(x, p0, p1); }
};

template <Activation A, typename T>
struct ActivationBackward {
  T p0, p1;
  C10_HOST_DEVICE T operator()(T g, T s) const {
    return ActivationMath<A>::backward(g, s, p0, p1);
  }
};

}  // namespace backprop_ext
