// Row statistics and epilogues of the softmax family, shared by the CPU and CUDA kernels.
//
// For a row x (reduced over one dim) with m = max(x) and s = sum(exp(x - m)):
//   softmax(x)      = exp(x - m) / s
//   log_softmax(x)  = x - m - log(s)
//   logsumexp(x)    = m + log(s), except that torch shifts by 0 instead of m when m is +-inf, so
//                     a row of -inf gives -inf and a row holding +inf gives +inf (not NaN)
//   cross-entropy   = -((x[target] - m) - log(s)), torch's -log_softmax[target] (NaN for a row of
//                     -inf or a row holding +inf); the row's lse = m + log(s) is kept for the
//                     backward, p = exp(x - lse).
// NaN anywhere in a row makes the whole row NaN, as in torch: max_nan propagates NaN.
//
// The GPU reads a row once for its statistics with the online update of (m, s) (Milakov and
// Gimelshein, 2018): m' = max(m, x), s' = s exp(m - m') + exp(x - m'). Entries of -inf add
// nothing and are skipped, so a leading -inf cannot poison s with exp(-inf - -inf) = NaN.
#pragma once

#include <c10/macros/Macros.h>

#include "core/math.h"

namespace backprop_ext {

using math::max_nan;
using math::neg_inf;

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

// --- softmax and log_softmax: the same kernels, each with its epilogue.
//
//   forward    y  = Epilogue(m, s)(x)                 for every x of the row
//   backward   acc = sum over the row of Epilogue::reduce(g, y)
//              dx = Epilogue::backward(g, y, acc)     for every element of the row
// The CPU vector loops mirror these lane for lane (cpu/softmax_kernels.cpp, VecEpilogue).

// y = exp(x - m) / s;  dx = y (g - sum(g y)).
template <typename T>
struct SoftmaxEpilogue {
  static constexpr const char* kName = "softmax";
  T m, r;  // the row's max and 1 / s

  C10_HOST_DEVICE SoftmaxEpilogue(T max, T sum) : m(max), r(T(1) / sum) {}
  C10_HOST_DEVICE T operator()(T x) const { return math::exp(x - m) * r; }
  C10_HOST_DEVICE static T reduce(T g, T y) { return g * y; }
  C10_HOST_DEVICE static T backward(T g, T y, T acc) { return y * (g - acc); }
};

// y = (x - m) - log(s), in that order, as torch computes it: x - (m + log s) would round
// m + log s first and lose log s where |m| is large;  dx = g - exp(y) sum(g).
template <typename T>
struct LogSoftmaxEpilogue {
  static constexpr const char* kName = "log_softmax";
  T m, log_s;  // the row's max and log of sum(exp(x - m))

  C10_HOST_DEVICE LogSoftmaxEpilogue(T max, T sum) : m(max), log_s(math::log(sum)) {}
  C10_HOST_DEVICE T operator()(T x) const { return (x - m) - log_s; }
  C10_HOST_DEVICE static T reduce(T g, T) { return g; }
  C10_HOST_DEVICE static T backward(T g, T y, T acc) { return g - math::exp(y) * acc; }
};

// Calls f(tag) with tag::template type<T> the epilogue: log picks log_softmax's. The op's `log`
// flag is read here, once per call; the kernels are compiled per epilogue.
template <template <typename> class E>
struct EpilogueTag {
  template <typename T>
  using type = E<T>;
};

template <typename F>
inline void visit_softmax_epilogue(bool log, F&& f) {
  if (log) {
    f(EpilogueTag<LogSoftmaxEpilogue>{});
  } else {
    f(EpilogueTag<SoftmaxEpilogue>{});
  }
}

}  // namespace backprop_ext
