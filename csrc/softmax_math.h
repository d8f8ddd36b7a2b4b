// Row statistics of the softmax family, shared by the CPU and CUDA kernels.
//
// For a row x (reduced over one dim) with m = max(x) and s = sum(exp(x - m)):
//   softmax(x)      = exp(x - m) / s
//   log_softmax(x)  = x - m - log(s)
//   logsumexp(x)    = m + log(s), except that torch shifts by 0 instead of m when m is +-inf, so
//                     a row of -inf gives -inf and a row holding +inf gives +inf (not NaN)
//   cross-entropy   = lse - x[target] with lse = m + log(s) unshifted, as torch's log_softmax
//                     path gives (NaN for a row of -inf or a row holding +inf).
// NaN anywhere in a row makes the whole row NaN, as in torch: max() below propagates NaN.
//
// The GPU reads a row once for its statistics with the online update of (m, s) (Milakov and
// Gimelshein, 2018): m' = max(m, x), s' = s exp(m - m') + exp(x - m'). Entries of -inf add
// nothing and are skipped, so a leading -inf cannot poison s with exp(-inf - -inf) = NaN.
#pragma once

#include <c10/macros/Macros.h>

#include <limits>

#include "activation_math.h"  // math::exp and friends

namespace backprop_ext {

template <typename T>
C10_HOST_DEVICE inline T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;  // NaN in a wins; NaN in b wins through !(a > b)
}

template <typename T>
C10_HOST_DEVICE inline T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// Running (max, sum of exp(x - max)) of a row.
template <typename T>
struct OnlineStats {
  T m = neg_inf<T>();
  T s = T(0);

  C10_HOST_DEVICE void add(T x) {
    if (x == neg_inf<T>()) return;  // contributes exp(-inf) = 0
    const T m_new = max_nan(m, x);
    s = s * math::exp(m - m_new) + math::exp(x - m_new);
    m = m_new;
  }

  C10_HOST_DEVICE void merge(const OnlineStats& o) {
    if (o.m == neg_inf<T>()) return;  // the other part is empty or all -inf
    if (m == neg_inf<T>()) {
      *this = o;
      return;
    }
    const T m_new = max_nan(m, o.m);
    s = s * math::exp(m - m_new) + o.s * math::exp(o.m - m_new);
    m = m_new;
  }
};

// torch.logsumexp from the row's (m, s): see the header comment for the +-inf rows.
template <typename T>
C10_HOST_DEVICE inline T logsumexp_from_stats(T m, T s) {
  if (m == neg_inf<T>() || m == -neg_inf<T>()) return m;
  return m + math::log(s);
}

}  // namespace backprop_ext
