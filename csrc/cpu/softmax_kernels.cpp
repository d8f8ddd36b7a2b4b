// Vectorized softmax and logsumexp loops (at::vec), compiled once per ISA with CPU_CAPABILITY set
// by setup.py. The math and the treatment of -inf, +inf and NaN are softmax_math.h's; the row and
// column loops are row_loops.h's (shared with cross_entropy_kernels.cpp).
//
// A row along the last dim (inner == 1) is read a few times while it sits in cache: once for its
// max, once for sum(exp(x - max)), once to write. Along an inner dim the vector lanes run across
// `inner` (contiguous) and the loops step through D with stride inner, so every load is a
// contiguous vector and every lane is an independent row.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "core/dispatch.h"
#include "cpu/row_loops.h"
#include "cpu/softmax_kernels.h"
#include "cpu/vec_loops.h"
#include "math/softmax_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

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

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
