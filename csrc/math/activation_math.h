// Activation math shared by the CPU and CUDA kernels (and by linear's fused epilogues).
//
// The list of activations is activation_table.h's; this header derives the enum, the name lookup
// and the compile-time dispatch from it, and holds each activation's math: ActivationMath<A>, with
//   forward(x, p0, p1)      y = f(x)
//   backward(g, s, p0, p1)  g * f'(.) where s is y for the rows that read the output (relu,
//                           relu6, sigmoid, tanh) and x for the others
// in T = at::opmath_type<scalar_t> (float for the half types). The functions are C10_HOST_DEVICE
// so that one definition serves the scalar CPU tail and every CUDA kernel; the CPU vector loops
// mirror them lane for lane (cpu/vec_math.h).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>

#include "core/math.h"
#include "ops/activation_table.h"

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
  TORCH_CHECK(false, "backprop_ext: unknown activation '", name,
              "'; expected one of:", BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_NAME));
#undef BACKPROP_EXT_NAME
}

// Where torch's CUDA autocast runs the activation in float32 (and returns float32): softplus is
// on its float32 list (ATen/autocast_mode.h, AT_FORALL_FP32); every other activation runs in its
// input's dtype, and CPU autocast casts none.
constexpr bool cuda_autocast_in_float32(Activation a) {
  return a == Activation::kSoftplus;
}

// True where the backward reads the forward's output rather than its input.
constexpr bool activation_saves_output(Activation a) {
  switch (a) {
#define BACKPROP_EXT_CASE(Enum, name, reads, signature, module) \
  case Activation::k##Enum: return ActivationReads::reads == ActivationReads::kOutput;
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
  case Activation::k##Enum: return f(ActivationTag<Activation::k##Enum>{});
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

// hardswish(x) = x relu6(x + 3) / 6;  f' = 0 up to -3, x / 3 + 1/2 between, 1 from 3 on (torch's
// kinks). A NaN input gives NaN, as in torch's vectorized loop (its scalar tail returns g).
template <>
struct ActivationMath<Activation::kHardswish> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    const T r = x + T(3);
    return x * (r < T(0) ? T(0) : r > T(6) ? T(6) : r) / T(6);  // NaN stays NaN
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    if (x <= T(-3)) return T(0);
    if (x >= T(3)) return g;
    return g * (x / T(3) + T(0.5));
  }
};

// relu6(x) = min(max(x, 0), 6) (torch's hardtanh(x, 0, 6));  f' from the output y: 1 strictly
// between 0 and 6, where y == x. A NaN gives 0, as in torch's vectorized loop.
template <>
struct ActivationMath<Activation::kRelu6> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return x < T(0) ? T(0) : x > T(6) ? T(6) : x;  // NaN stays NaN
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y, T, T) {
    return y > T(0) && y < T(6) ? g : T(0);
  }
};

// elu(x; a) = x > 0 ? s x : s a expm1(x), with a scale s: 1 for elu (a = p0), SELU's constants for
// selu.  f' = s, or s a e^x (torch's backward from the input). A NaN input gives NaN.
template <typename T>
C10_HOST_DEVICE inline T elu_forward(T x, T alpha, T scale) {
  return x > T(0) ? x * scale : math::expm1(x) * (alpha * scale);
}
template <typename T>
C10_HOST_DEVICE inline T elu_backward(T g, T x, T alpha, T scale) {
  return x > T(0) ? g * scale : g * (alpha * scale) * math::exp(x);
}

template <>
struct ActivationMath<Activation::kElu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T alpha, T) {
    return elu_forward(x, alpha, T(1));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T alpha, T) {
    return elu_backward(g, x, alpha, T(1));
  }
};

template <typename T>
struct SeluConstants {
  static constexpr T kAlpha = T(1.6732632423543772848170429916717);
  static constexpr T kScale = T(1.0507009873554804934193349852946);
};

template <>
struct ActivationMath<Activation::kSelu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return elu_forward(x, SeluConstants<T>::kAlpha, SeluConstants<T>::kScale);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    return elu_backward(g, x, SeluConstants<T>::kAlpha, SeluConstants<T>::kScale);
  }
};

// mish(x) = x tanh(softplus(x)), softplus(x) = log(1 + e^x) (no threshold, as torch's mish);
// f' = t + x sigmoid(x) (1 - t^2) with t = tanh(softplus(x)).
// t from one exponential e = e^x: (1 + e)^2 = 1 + n with n = e (e + 2), so t = n / (n + 2) and
// sigmoid(x) = e / (1 + e). Past x = 20, t rounds to 1 (in double too) and n would overflow float
// past 44: e is taken at 20 there, which gives t = 1 exactly. NaN stays NaN; -inf gives NaN
// (-inf * 0), as torch's does.
template <typename T>
C10_HOST_DEVICE inline T mish_exp(T x) {
  return math::exp(x > T(20) ? T(20) : x);
}

template <>
struct ActivationMath<Activation::kMish> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    const T e = mish_exp(x);
    const T n = e * (e + T(2));
    return x * (n / (n + T(2)));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    const T e = mish_exp(x);
    const T n = e * (e + T(2));
    const T t = n / (n + T(2));
    const T sig = e / (T(1) + e);
    return g * (t + x * sig * (T(1) - t * t));
  }
};

// quick_gelu(x) = x sigmoid(1.702 x) (transformers' QuickGELUActivation; not in torch);
// f' = s (1 + 1.702 x (1 - s)) with s = sigmoid(1.702 x).
template <typename T>
struct QuickGeluConstants {
  static constexpr T kAlpha = T(1.702);
};

template <>
struct ActivationMath<Activation::kQuickGelu> {
  template <typename T>
  C10_HOST_DEVICE static T forward(T x, T, T) {
    return x / (T(1) + math::exp(-QuickGeluConstants<T>::kAlpha * x));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, T, T) {
    constexpr T kAlpha = QuickGeluConstants<T>::kAlpha;
    const T s = T(1) / (T(1) + math::exp(-kAlpha * x));
    return g * s * (T(1) + kAlpha * x * (T(1) - s));
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
  C10_HOST_DEVICE T operator()(T g, T s) const { return ActivationMath<A>::backward(g, s, p0, p1); }
};

}  // namespace backprop_ext
