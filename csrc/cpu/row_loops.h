// The row and column loops that the softmax and cross-entropy kernels share (at::vec): a row's
// max, its sum of f(x), its (max, sum(exp(x - max))) statistics (softmax_math.h's), maps over a
// row, and blocks of columns along an inner dim. Include it only from a *_kernels.cpp: everything
// here lives in the CPU_CAPABILITY namespace that setup.py sets per build (see isa.h), in an
// unnamed namespace, as the file-local helpers they were (each kernel file keeps its own copy, so
// the compiler inlines them exactly as before).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <utility>

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

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
