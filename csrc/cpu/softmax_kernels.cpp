// Vectorized softmax-family loops (at::vec), compiled once per ISA with CPU_CAPABILITY set by
// setup.py. The math and the treatment of -inf, +inf and NaN are softmax_math.h's.
//
// A row along the last dim (inner == 1) is read a few times while it sits in cache: once for its
// max, once for sum(exp(x - max)), once to write. Along an inner dim the vector lanes run across
// `inner` (contiguous) and the loops step through D with stride inner, so every load is a
// contiguous vector and every lane is an independent row.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "core/dispatch.h"
#include "cpu/softmax_kernels.h"
#include "cpu/vec_loops.h"
#include "math/softmax_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

template <typename T>
T reduce_max(Vectorized<T> v) {
  return at::vec::vec_reduce_all<T>(
      [](Vectorized<T>& a, Vectorized<T>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename T>
T reduce_sum(Vectorized<T> v) {
  return at::vec::vec_reduce_all<T>([](Vectorized<T>& a, Vectorized<T>& b) { return a + b; }, v);
}

// --- one row along the last dim

template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
T row_max(const scalar_t* x, int64_t D) {
  using L = Lanes<scalar_t>;
  typename L::V acc(neg_inf<T>());
  int64_t i = 0;
  for (; i + L::kSize <= D; i += L::kSize) acc = at::vec::maximum(acc, L::load(x + i));
  T m = reduce_max(acc);
  for (; i < D; ++i) m = max_nan(m, static_cast<T>(x[i]));
  return m;
}

// sum(f(x)) over a row, f mapping lanes of T to lanes of T (and scalars to scalars).
template <typename scalar_t, typename VecF, typename ScalarF,
          typename T = at::opmath_type<scalar_t>>
T row_sum(const scalar_t* x, int64_t D, const VecF& vf, const ScalarF& sf) {
  using L = Lanes<scalar_t>;
  typename L::V acc(T(0));
  int64_t i = 0;
  for (; i + L::kSize <= D; i += L::kSize) acc = acc + vf(L::load(x + i));
  T s = reduce_sum(acc);
  for (; i < D; ++i) s += sf(static_cast<T>(x[i]));
  return s;
}

// (max, sum(exp(x - max))) of a row: softmax_math.h's statistics, two reads of a cached row.
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
std::pair<T, T> row_stats(const scalar_t* x, int64_t D) {
  using V = typename Lanes<scalar_t>::V;
  const T m = row_max(x, D);
  const V vm(m);
  const T s =
      row_sum(x, D, [&](V v) { return (v - vm).exp(); }, [&](T v) { return math::exp(v - m); });
  return {m, s};
}

// The same statistics for a block of columns, lane by lane: column j of the block is
// x[d * inner + j] for d < D, read through `load` (see for_each_column_block).
template <typename scalar_t, typename Load, typename V = typename Lanes<scalar_t>::V>
std::pair<V, V> column_stats(const scalar_t* x, int64_t D, int64_t inner, const Load& load) {
  using T = typename Lanes<scalar_t>::T;
  V vm(neg_inf<T>());
  for (int64_t d = 0; d < D; ++d) vm = at::vec::maximum(vm, load(x + d * inner));
  V vs(T(0));
  for (int64_t d = 0; d < D; ++d) vs = vs + (load(x + d * inner) - vm).exp();
  return {vm, vs};
}

// out[i] = f(x[i]) over a row.
template <typename scalar_t, typename VecF, typename ScalarF>
void row_map(const scalar_t* x, scalar_t* out, int64_t D, const VecF& vf, const ScalarF& sf) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  int64_t i = 0;
  for (; i + L::kSize <= D; i += L::kSize) L::store(out + i, vf(L::load(x + i)));
  for (; i < D; ++i) out[i] = static_cast<scalar_t>(sf(static_cast<T>(x[i])));
}

// out[i] = f(a[i], b[i]) over a row.
template <typename scalar_t, typename VecF, typename ScalarF>
void row_map2(const scalar_t* a, const scalar_t* b, scalar_t* out, int64_t D, const VecF& vf,
              const ScalarF& sf) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  int64_t i = 0;
  for (; i + L::kSize <= D; i += L::kSize) L::store(out + i, vf(L::load(a + i), L::load(b + i)));
  for (; i < D; ++i) {
    out[i] = static_cast<scalar_t>(sf(static_cast<T>(a[i]), static_cast<T>(b[i])));
  }
}

// Calls f(c, n, load) for each block of n <= kSize columns of `inner`, where load(p) reads the
// block's n lanes at p (full-width loads when n == kSize).
template <typename scalar_t, typename F>
void for_each_column_block(int64_t inner, const F& f) {
  using L = Lanes<scalar_t>;
  for (int64_t c = 0; c < inner; c += L::kSize) {
    const int64_t n = std::min<int64_t>(L::kSize, inner - c);
    if (n == L::kSize) {
      f(c, n, [](const scalar_t* p) { return L::load(p); });
    } else {
      f(c, n, [n](const scalar_t* p) { return L::load(p, n); });
    }
  }
}

// --- softmax / log_softmax: one loop each, with the epilogue of softmax_math.h

// The vector form of an epilogue, lane for lane; from one row's scalar statistics (last dim) or
// from a block of columns' statistics, one per lane (inner dim).
template <typename E>
struct VecEpilogue;

template <typename T>
struct VecEpilogue<SoftmaxEpilogue<T>> {
  using V = Vectorized<T>;
  V m, r;
  explicit VecEpilogue(const SoftmaxEpilogue<T>& e) : m(e.m), r(e.r) {}
  VecEpilogue(V max, V sum) : m(max), r(V(T(1)) / sum) {}
  V operator()(V x) const { return (x - m).exp() * r; }
  static V reduce(V g, V y) { return g * y; }
  static V backward(V g, V y, V acc) { return y * (g - acc); }
};

template <typename T>
struct VecEpilogue<LogSoftmaxEpilogue<T>> {
  using V = Vectorized<T>;
  V m, log_s;
  explicit VecEpilogue(const LogSoftmaxEpilogue<T>& e) : m(e.m), log_s(e.log_s) {}
  VecEpilogue(V max, V sum) : m(max), log_s(sum.log()) {}
  V operator()(V x) const { return (x - m) - log_s; }
  static V reduce(V g, V) { return g; }
  static V backward(V g, V y, V acc) { return g - y.exp() * acc; }
};

template <typename scalar_t, template <typename> class Epilogue>
void softmax_fwd_impl(const scalar_t* x, scalar_t* y, int64_t outer, int64_t D, int64_t inner) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using E = Epilogue<T>;
  using VE = VecEpilogue<E>;
  for (int64_t o = 0; o < outer; ++o) {
    const scalar_t* xo = x + o * D * inner;
    scalar_t* yo = y + o * D * inner;
    if (inner == 1) {
      const auto [m, s] = row_stats(xo, D);
      const E e(m, s);
      const VE ve(e);
      row_map(xo, yo, D, ve, e);
      continue;
    }
    for_each_column_block<scalar_t>(inner, [&](int64_t c, int64_t n, auto load) {
      const auto [vm, vs] = column_stats(xo + c, D, inner, load);
      const VE ve(vm, vs);
      for (int64_t d = 0; d < D; ++d) {
        L::store(yo + d * inner + c, ve(load(xo + d * inner + c)), n);
      }
    });
  }
}

template <typename scalar_t, template <typename> class Epilogue>
void softmax_bwd_impl(const scalar_t* g, const scalar_t* y, scalar_t* gx, int64_t outer, int64_t D,
                      int64_t inner) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using V = typename L::V;
  using E = Epilogue<T>;
  using VE = VecEpilogue<E>;
  for (int64_t o = 0; o < outer; ++o) {
    const int64_t off = o * D * inner;
    const scalar_t *go = g + off, *yo = y + off;
    scalar_t* gxo = gx + off;
    if (inner == 1) {
      V vacc(T(0));
      int64_t i = 0;
      for (; i + L::kSize <= D; i += L::kSize) {
        vacc = vacc + VE::reduce(L::load(go + i), L::load(yo + i));
      }
      T acc = reduce_sum(vacc);
      for (; i < D; ++i) acc += E::reduce(static_cast<T>(go[i]), static_cast<T>(yo[i]));
      const V va(acc);
      row_map2(
          go, yo, gxo, D, [&](V gv, V yv) { return VE::backward(gv, yv, va); },
          [&](T gv, T yv) { return E::backward(gv, yv, acc); });
      continue;
    }
    for_each_column_block<scalar_t>(inner, [&](int64_t c, int64_t n, auto load) {
      V acc(T(0));
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = d * inner + c;
        acc = acc + VE::reduce(load(go + i), load(yo + i));
      }
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = d * inner + c;
        L::store(gxo + i, VE::backward(load(go + i), load(yo + i), acc), n);
      }
    });
  }
}

// --- logsumexp

template <typename scalar_t>
void logsumexp_fwd_impl(const scalar_t* x, scalar_t* out, int64_t outer, int64_t D, int64_t inner) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using V = typename L::V;
  for (int64_t o = 0; o < outer; ++o) {
    const scalar_t* xo = x + o * D * inner;
    scalar_t* out_o = out + o * inner;
    if (inner == 1) {
      const auto [m, s] = row_stats(xo, D);
      out_o[0] = static_cast<scalar_t>(logsumexp_from_stats(m, s));
      continue;
    }
    for_each_column_block<scalar_t>(inner, [&](int64_t c, int64_t n, auto load) {
      const auto [vm, vs] = column_stats(xo + c, D, inner, load);
      const V lse = vm + vs.log();
      // +-inf maxima give themselves (logsumexp_from_stats), lane by lane.
      L::store(out_o + c, V::blendv(lse, vm, vm.abs() == V(-neg_inf<T>())), n);
    });
  }
}

// dx = g exp(x - result), g and result broadcast along the reduced dim.
template <typename scalar_t>
void logsumexp_bwd_impl(const scalar_t* g, const scalar_t* x, const scalar_t* r, scalar_t* gx,
                        int64_t outer, int64_t D, int64_t inner) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using V = typename L::V;
  for (int64_t o = 0; o < outer; ++o) {
    const scalar_t* xo = x + o * D * inner;
    scalar_t* gxo = gx + o * D * inner;
    if (inner == 1) {
      const T gv = static_cast<T>(g[o]), rv = static_cast<T>(r[o]);
      const V vg(gv), vr(rv);
      row_map(
          xo, gxo, D, [&](V v) { return vg * (v - vr).exp(); },
          [&](T v) { return gv * math::exp(v - rv); });
      continue;
    }
    for_each_column_block<scalar_t>(inner, [&](int64_t c, int64_t n, auto load) {
      const V vg = load(g + o * inner + c), vr = load(r + o * inner + c);
      for (int64_t d = 0; d < D; ++d) {
        L::store(gxo + d * inner + c, vg * (load(xo + d * inner + c) - vr).exp(), n);
      }
    });
  }
}

// --- cross-entropy with class-index targets (rows of C logits)

template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
T total_weight(const scalar_t* w, int64_t C) {
  if (w == nullptr) return static_cast<T>(C);
  T sum = 0;
  for (int64_t c = 0; c < C; ++c) sum += static_cast<T>(w[c]);
  return sum;
}

// A class index the kernels may read logits[t] and weight[t] at.
inline bool valid_class(int64_t t, int64_t C) {
  return t >= 0 && t < C;
}

template <typename scalar_t>
int64_t cross_entropy_fwd_impl(const scalar_t* logits, const int64_t* target, const scalar_t* w,
                               int64_t rows, int64_t C, int64_t ignore_index,
                               at::opmath_type<scalar_t>* nll, at::opmath_type<scalar_t>* smooth,
                               at::opmath_type<scalar_t>* lse) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using V = typename L::V;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* x = logits + r * C;
    const int64_t t = target[r];
    if (t == ignore_index) {
      nll[r] = T(0);
      lse[r] = T(0);
      if (smooth) smooth[r] = T(0);
      continue;
    }
    if (!valid_class(t, C)) return r;
    const auto [m, s] = row_stats(x, C);
    const T log_s = math::log(s);
    lse[r] = m + log_s;
    nll[r] = -((static_cast<T>(x[t]) - m) - log_s);  // -log_softmax, in torch's order
    if (smooth) {
      // sum_c w_c (-log_softmax_c) = sum_c w_c ((m - x_c) + log s): every term is >= 0, so no
      // cancellation.
      const V vm(m), vlog_s(log_s);
      if (w == nullptr) {
        smooth[r] = row_sum(
            x, C, [&](V v) { return (vm - v) + vlog_s; }, [&](T v) { return (m - v) + log_s; });
      } else {
        V acc(T(0));
        int64_t c = 0;
        for (; c + L::kSize <= C; c += L::kSize) {
          acc = acc + L::load(w + c) * ((vm - L::load(x + c)) + vlog_s);
        }
        T sum = reduce_sum(acc);
        for (; c < C; ++c) sum += static_cast<T>(w[c]) * ((m - static_cast<T>(x[c])) + log_s);
        smooth[r] = sum;
      }
    }
  }
  return -1;
}

template <typename scalar_t>
int64_t cross_entropy_bwd_impl(const scalar_t* logits, const int64_t* target, const scalar_t* w,
                               const at::opmath_type<scalar_t>* lse,
                               const at::opmath_type<scalar_t>* grad_nll,
                               const at::opmath_type<scalar_t>* grad_smooth, int64_t rows,
                               int64_t C, int64_t ignore_index, scalar_t* grad_logits) {
  using L = Lanes<scalar_t>;
  using T = typename L::T;
  using V = typename L::V;
  const T W = total_weight(w, C);
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* x = logits + r * C;
    scalar_t* gx = grad_logits + r * C;
    const int64_t t = target[r];
    if (t == ignore_index) {
      std::fill(gx, gx + C, scalar_t(0));
      continue;
    }
    if (!valid_class(t, C)) return r;
    const T a = grad_nll[r];
    const T b = grad_smooth ? grad_smooth[r] : T(0);
    const T row_lse = lse[r];
    // Read before the row is written: grad_logits may be the logits themselves.
    const T p_t = math::exp(static_cast<T>(x[t]) - row_lse);
    // dx_c = a (p_c - [c == t]) + b (p_c W - w_c) = (a + b W) p_c - b w_c - a [c == t]
    const T k = a + b * W;
    const V vk(k), vb(b), vlse(row_lse);
    int64_t c = 0;
    if (w == nullptr) {
      for (; c + L::kSize <= C; c += L::kSize) {
        L::store(gx + c, vk * (L::load(x + c) - vlse).exp() - vb);
      }
      for (; c < C; ++c)
        gx[c] = static_cast<scalar_t>(k * math::exp(static_cast<T>(x[c]) - row_lse) - b);
    } else {
      for (; c + L::kSize <= C; c += L::kSize) {
        L::store(gx + c, vk * (L::load(x + c) - vlse).exp() - vb * L::load(w + c));
      }
      for (; c < C; ++c) {
        gx[c] = static_cast<scalar_t>(k * math::exp(static_cast<T>(x[c]) - row_lse) -
                                      b * static_cast<T>(w[c]));
      }
    }
    const T wt = w == nullptr ? T(1) : static_cast<T>(w[t]);
    gx[t] = static_cast<scalar_t>(k * p_t - b * wt - a);
  }
  return -1;
}

}  // namespace

// --- entry points

void softmax_fwd_kernel(c10::ScalarType dtype, const void* x, void* y, int64_t outer, int64_t D,
                        int64_t inner, bool log) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "softmax_fwd", [&] {
    visit_softmax_epilogue(log, [&](auto tag) {
      softmax_fwd_impl<scalar_t, decltype(tag)::template type>(
          static_cast<const scalar_t*>(x), static_cast<scalar_t*>(y), outer, D, inner);
    });
  });
}

void softmax_bwd_kernel(c10::ScalarType dtype, const void* grad, const void* y, void* grad_x,
                        int64_t outer, int64_t D, int64_t inner, bool log) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "softmax_bwd", [&] {
    visit_softmax_epilogue(log, [&](auto tag) {
      softmax_bwd_impl<scalar_t, decltype(tag)::template type>(
          static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(y),
          static_cast<scalar_t*>(grad_x), outer, D, inner);
    });
  });
}

void logsumexp_fwd_kernel(c10::ScalarType dtype, const void* x, void* out, int64_t outer, int64_t D,
                          int64_t inner) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "logsumexp_fwd", [&] {
    logsumexp_fwd_impl(static_cast<const scalar_t*>(x), static_cast<scalar_t*>(out), outer, D,
                       inner);
  });
}

void logsumexp_bwd_kernel(c10::ScalarType dtype, const void* grad, const void* x,
                          const void* result, void* grad_x, int64_t outer, int64_t D,
                          int64_t inner) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "logsumexp_bwd", [&] {
    logsumexp_bwd_impl(static_cast<const scalar_t*>(grad), static_cast<const scalar_t*>(x),
                       static_cast<const scalar_t*>(result), static_cast<scalar_t*>(grad_x), outer,
                       D, inner);
  });
}

int64_t cross_entropy_fwd_kernel(c10::ScalarType dtype, const void* logits, const int64_t* target,
                                 const void* weight, int64_t rows, int64_t C, int64_t ignore_index,
                                 void* nll, void* smooth, void* lse) {
  int64_t bad_row = -1;
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "cross_entropy_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    bad_row = cross_entropy_fwd_impl(
        static_cast<const scalar_t*>(logits), target, static_cast<const scalar_t*>(weight), rows, C,
        ignore_index, static_cast<T*>(nll), static_cast<T*>(smooth), static_cast<T*>(lse));
  });
  return bad_row;
}

int64_t cross_entropy_bwd_kernel(c10::ScalarType dtype, const void* logits, const int64_t* target,
                                 const void* weight, const void* lse, const void* grad_nll,
                                 const void* grad_smooth, int64_t rows, int64_t C,
                                 int64_t ignore_index, void* grad_logits) {
  int64_t bad_row = -1;
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "cross_entropy_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    bad_row =
        cross_entropy_bwd_impl(static_cast<const scalar_t*>(logits), target,
                               static_cast<const scalar_t*>(weight), static_cast<const T*>(lse),
                               static_cast<const T*>(grad_nll), static_cast<const T*>(grad_smooth),
                               rows, C, ignore_index, static_cast<scalar_t*>(grad_logits));
  });
  return bad_row;
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
