// Math of the multi-tensor family (gradient clipping), shared by the CPU and CUDA kernels.
//
//   norm:   ||x||_p of all tensors viewed as one vector = (sum_i |x_i|^p)^(1/p),  max_i |x_i| for
//           p = inf. Computed as one partial per chunk of kMultiTensorChunk elements, combined in
//           float64, then finalized (the p-th root); see "Norms without overflow" below.
//   scale:  x *= min(1, max_norm / (norm + 1e-6)), torch.nn.utils.clip_grad_norm_'s
//           clip_coef_clamped, evaluated the way torch evaluates it (see clip_coefficient).
//   clamp:  x = min(max(x, lo), hi), torch.clamp's order.
// NaN propagates through all three, as in torch: a NaN anywhere makes the norm NaN, a NaN norm
// makes the coefficient NaN, a NaN element stays NaN under clamp.
//
// Norms without overflow or underflow
// -----------------------------------
// sum |x|^p can leave the accumulation type's range long before the norm does: one float32
// element of 3e34 has a finite norm but a square of 9e68, and the squares of float32 elements of
// 1e-30 flush to zero. So a chunk's partial is a pair (scale, sum) standing for scale^p * sum,
// found in one of two ways:
//   * the plain pass, all that ordinary data ever needs: sum |x|^p in the opmath type T, exactly
//     as without this scheme. If the sum lies in [kSafeSumMin<T>, kSafeSumMax], nothing was lost
//     to overflow or underflow and the partial is (1, sum); a NaN sum is kept as (1, NaN).
//   * otherwise the chunk's max |x| settles all-zero chunks, (0, 0), and infinite ones,
//     (inf, 1); any other chunk is summed again as |x / max|^p, terms in [0, 1] of which the
//     largest is exactly 1 whatever p is (a power-of-two scale near the max could not promise
//     that for large p, nor be represented for a subnormal max): the partial is (max, sum).
// Where the max comes from is each device's choice, made for what a second read costs there.
// The CPU finds it with a second pass over the chunk, which it has just read and still holds in
// cache, so that its plain loop is exactly the loop without this scheme (that loop runs from
// cache, compute-bound, whenever the gradients fit there). CUDA keeps a running max in the plain
// pass, one max per element in a loop bound by memory bandwidth, since a second read there comes
// from device memory, in a second launch that returns at once for settled chunks (see
// multi_tensor.cu); otherwise every all-zero chunk would be read twice. Neither reads anything
// back to the host.
// Partials combine as  M = max scale,  S = sum over partials of sum * (scale / M)^p,
// norm = M * S^(1/p). When every scale is 1 (ordinary data) that is the plain sum and root, bit for
// bit. A term that underflows in the weighting is negligible: apart from (1, sum) partials, whose
// sum is at least kSafeSumMin<T>, every partial has sum >= 1 (its max contributes exactly 1).
// Why not the classic running-scale sum (LAPACK's old nrm2: per lane a max and a sum of
// (|x| / max)^2, rescaled when the max grows)? It divides every element and branches on every
// new max, in loops that must run at memory speed; here the common case pays nothing on the CPU
// and one max per element on CUDA.
// L1, p < 1 and inf cannot overflow before the norm does in the tensors' own dtype, but a float32
// L1 or p < 1 partial can when the result is float64 (a call mixing dtypes), so they take the
// same path.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <type_traits>

#include "core/math.h"

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

// Range of a chunk's plain sum of |x|^p (accumulated in T, then held in double) within which
// nothing was lost: above kSafeSumMin<T> the terms that underflowed in T (each < T's smallest
// normal, at most kMultiTensorChunk of them) weigh less than T's rounding error; below
// kSafeSumMax every sum of up to 2^47 partials (2^63 elements in chunks of 2^16) fits in double.
template <typename T>
constexpr double kSafeSumMin = std::is_same_v<T, double> ? 0x1p-900 : 0x1p-100;
constexpr double kSafeSumMax = 0x1p+900;

// A chunk's (or a range's) share of ||x||_p^p, as scale^p * sum: see "Norms without overflow".
// (0, 0) is no elements (or zeros only); (1, NaN) a NaN; (inf, 1) an infinity; for p = inf,
// (max |x|, 1).
struct NormPartial {
  double scale;
  double sum;
};

// One element's contribution and the in-chunk accumulation in T; a chunk's partial from its
// sums; the combination of partials and the final root in double.
template <NormKind K, typename T>
struct NormOp {
  T p;

  // |x|^p (|x| for L1 and inf).
  C10_HOST_DEVICE T map(T x) const {
    const T a = x < T(0) ? -x : x;
    if constexpr (K == NormKind::kL1 || K == NormKind::kLinf) {
      return a;
    } else if constexpr (K == NormKind::kL2) {
      return a * a;
    } else {
      return math::pow(a, p);
    }
  }

  C10_HOST_DEVICE static T combine(T a, T b) {
    if constexpr (K == NormKind::kLinf) {
      return math::max_nan(a, b);
    } else {
      return a + b;
    }
  }

  // The chunk's partial from the sum of its plain pass (for p = inf, the max |x|), if that
  // settles it: a sum in the safe range (the common case), or NaN, which the combination
  // propagates.
  C10_HOST_DEVICE static bool partial_from_sum(double sum, NormPartial& out) {
    if (K == NormKind::kLinf || (sum >= kSafeSumMin<T> && sum <= kSafeSumMax) || sum != sum) {
      out = K == NormKind::kLinf ? NormPartial{sum, 1.0} : NormPartial{1.0, sum};
      return true;
    }
    return false;
  }

  // Otherwise, from the chunk's max |x|, if that settles it: all zeros, or an infinity. If not,
  // the chunk must be summed again as map(x / max_abs): rescaled_partial(max_abs, that sum).
  C10_HOST_DEVICE static bool partial_from_max(double max_abs, NormPartial& out) {
    if (max_abs == 0) {
      out = {0.0, 0.0};
    } else if (max_abs > std::numeric_limits<double>::max()) {
      out = {max_abs, 1.0};
    } else {
      return false;
    }
    return true;
  }

  C10_HOST_DEVICE static NormPartial rescaled_partial(double max_abs, double scaled_sum) {
    return {max_abs, scaled_sum};
  }

  // Combining partials: M = the largest scale (max_scale over all of them), then
  // S = sum of partial.sum * weight(partial.scale, M), then finalize(M, S). Used with T = double.
  C10_HOST_DEVICE static T max_scale(T m, T scale) { return math::max_nan(m, scale); }

  // (scale / m)^p; 1 where scale == m (also for 0 and inf, where the ratio would be NaN).
  C10_HOST_DEVICE T weight(T scale, T m) const { return scale == m ? T(1) : map(scale / m); }

  // m * s^(1/p); for p = inf the largest scale is the norm.
  C10_HOST_DEVICE T finalize(T m, T s) const {
    if constexpr (K == NormKind::kL2) {
      return m * math::sqrt(s);
    } else if constexpr (K == NormKind::kLp) {
      return m * math::pow(s, T(1) / p);
    } else if constexpr (K == NormKind::kL1) {
      return m * s;
    } else {
      return m;
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
