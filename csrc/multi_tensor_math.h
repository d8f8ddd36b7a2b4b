// Math of the multi-tensor family (gradient clipping), shared by the CPU and CUDA kernels.
//
//   norm:   ||x||_p of all tensors viewed as one vector = (sum_i |x_i|^p)^(1/p),  max_i |x_i| for
//           p = inf. Computed as per-chunk partials (sum of |x|^p, or max |x|) that are combined
//           in float64, then finalized (the p-th root).
//   scale:  x *= min(1, max_norm / (norm + 1e-6)), torch.nn.utils.clip_grad_norm_'s
//           clip_coef_clamped, evaluated the way torch evaluates it (see clip_coefficient).
//   clamp:  x = min(max(x, lo), hi), torch.clamp's order.
// NaN propagates through all three, as in torch: a NaN anywhere makes the norm NaN, a NaN norm
// makes the coefficient NaN, a NaN element stays NaN under clamp.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <type_traits>

namespace backprop_ext {

// Accumulated quantity per norm order: L1 and L2 get their own (cheaper) code, Lp uses pow.
enum class NormKind { kL1, kL2, kLinf, kLp };

// The norm order `p` of op `op` as a NormKind: any p > 0, or +inf.
inline NormKind parse_norm_kind(const char* op, double p) {
  TORCH_CHECK(p > 0, op, ": expected the norm order p to be a positive number or inf, but got ", p,
              " (p = 0 counts nonzero elements and p < 0 is not a norm; neither can clip)");
  if (std::isinf(p)) return NormKind::kLinf;
  if (p == 1.0) return NormKind::kL1;
  if (p == 2.0) return NormKind::kL2;
  return NormKind::kLp;
}

template <typename F>
inline decltype(auto) visit_norm_kind(NormKind kind, F&& f) {
  using K = NormKind;
  switch (kind) {
    case K::kL1: return f(std::integral_constant<K, K::kL1>{});
    case K::kL2: return f(std::integral_constant<K, K::kL2>{});
    case K::kLinf: return f(std::integral_constant<K, K::kLinf>{});
    case K::kLp: return f(std::integral_constant<K, K::kLp>{});
  }
  TORCH_CHECK(false, "unreachable NormKind");
}

namespace norm_math {

// Precise libm/CUDA math on each opmath type.
C10_HOST_DEVICE inline float pow(float x, float y) { return ::powf(x, y); }
C10_HOST_DEVICE inline double pow(double x, double y) { return ::pow(x, y); }
C10_HOST_DEVICE inline float sqrt(float x) { return ::sqrtf(x); }
C10_HOST_DEVICE inline double sqrt(double x) { return ::sqrt(x); }

// max that returns NaN if either side is NaN (std::max and fmax drop it).
template <typename T>
C10_HOST_DEVICE inline T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

}  // namespace norm_math

// One element's contribution, the combination of two partials, and the final root, in T.
template <NormKind K, typename T>
struct NormOp {
  T p;

  C10_HOST_DEVICE T map(T x) const {
    const T a = x < T(0) ? -x : x;
    if constexpr (K == NormKind::kL1 || K == NormKind::kLinf) {
      return a;
    } else if constexpr (K == NormKind::kL2) {
      return a * a;
    } else {
      return norm_math::pow(a, p);
    }
  }

  C10_HOST_DEVICE static T combine(T a, T b) {
    if constexpr (K == NormKind::kLinf) {
      return norm_math::nan_max(a, b);
    } else {
      return a + b;
    }
  }

  // sum |x|^p -> its p-th root; max |x| is already the norm.
  C10_HOST_DEVICE T finalize(T acc) const {
    if constexpr (K == NormKind::kL2) {
      return norm_math::sqrt(acc);
    } else if constexpr (K == NormKind::kLp) {
      return norm_math::pow(acc, T(1) / p);
    } else {
      return acc;
    }
  }
};

// min(1, max_norm / (norm + 1e-6)) in T, step by step as torch computes clip_coef_clamped:
// `max_norm / (total_norm + 1e-6)` is Tensor.__rtruediv__, i.e. reciprocal(norm + 1e-6) * max_norm,
// then clamp(max=1), which keeps NaN. T is float for a float32 norm, double for a float64 one.
template <typename T>
C10_HOST_DEVICE inline T clip_coefficient(T norm, T max_norm) {
  const T coef = (T(1) / (norm + T(1e-6))) * max_norm;
  return coef > T(1) ? T(1) : coef;
}

// torch.clamp(x, lo, hi): max with lo first, then min with hi; NaN stays NaN.
template <typename T>
C10_HOST_DEVICE inline T clamp_value(T x, T lo, T hi) {
  if (x != x) return x;
  const T above_lo = x < lo ? lo : x;
  return above_lo > hi ? hi : above_lo;
}

}  // namespace backprop_ext
