// Scalar math shared by every family and both devices: the precise libm/CUDA function for each
// opmath type (float for float/half/bfloat16, double for double), and the comparisons whose NaN
// behaviour torch's reductions have. No fast-math anywhere: results must match torch.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <limits>

namespace backprop_ext::math {

C10_HOST_DEVICE inline float exp(float x) {
  return ::expf(x);
}
C10_HOST_DEVICE inline double exp(double x) {
  return ::exp(x);
}
C10_HOST_DEVICE inline float expm1(float x) {
  return ::expm1f(x);
}
C10_HOST_DEVICE inline double expm1(double x) {
  return ::expm1(x);
}
C10_HOST_DEVICE inline float erf(float x) {
  return ::erff(x);
}
C10_HOST_DEVICE inline double erf(double x) {
  return ::erf(x);
}
C10_HOST_DEVICE inline float tanh(float x) {
  return ::tanhf(x);
}
C10_HOST_DEVICE inline double tanh(double x) {
  return ::tanh(x);
}
C10_HOST_DEVICE inline float log(float x) {
  return ::logf(x);
}
C10_HOST_DEVICE inline double log(double x) {
  return ::log(x);
}
C10_HOST_DEVICE inline float log1p(float x) {
  return ::log1pf(x);
}
C10_HOST_DEVICE inline double log1p(double x) {
  return ::log1p(x);
}
C10_HOST_DEVICE inline float pow(float x, float y) {
  return ::powf(x, y);
}
C10_HOST_DEVICE inline double pow(double x, double y) {
  return ::pow(x, y);
}
C10_HOST_DEVICE inline float sqrt(float x) {
  return ::sqrtf(x);
}
C10_HOST_DEVICE inline double sqrt(double x) {
  return ::sqrt(x);
}

// max(a, b) that returns NaN when either is NaN, as torch's max reductions do (std::max and fmax
// drop it): NaN in a wins through `a != a`, NaN in b through !(a > b).
template <typename T>
C10_HOST_DEVICE inline T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// max(a, b) that keeps `a` when b is NaN (a NaN in `a` stays): for a running max |x| kept beside a
// sum that carries a NaN by itself.
template <typename T>
C10_HOST_DEVICE inline T max_of(T a, T b) {
  return b > a ? b : a;
}

template <typename T>
C10_HOST_DEVICE inline T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

}  // namespace backprop_ext::math
