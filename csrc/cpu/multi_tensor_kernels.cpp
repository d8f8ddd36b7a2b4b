// Vectorized multi-tensor loops (at::vec) over one chunk, compiled once per ISA with
// CPU_CAPABILITY set by setup.py. The norm's scalar tail calls multi_tensor_math.h's functions,
// which its vector code mirrors lane for lane; scale and clamp run every element through
// vec_loops.h's map.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "core/dispatch.h"
#include "cpu/multi_tensor_kernels.h"
#include "cpu/vec_loops.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

using at::vec::Vectorized;

// acc <- combine(acc, map(x)) on vectors of T (float or double): NormOp's step, lane by lane.
template <NormKind K, typename T>
struct VecNormStep {
  using V = Vectorized<T>;
  V p;
  V operator()(V acc, V x) const {
    if constexpr (K == NormKind::kL2) {
      return at::vec::fmadd(x, x, acc);
    } else if constexpr (K == NormKind::kL1) {
      return acc + x.abs();
    } else if constexpr (K == NormKind::kLinf) {
      return at::vec::maximum(acc, x.abs());  // propagates NaN
    } else {
      return acc + x.abs().pow(p);
    }
  }
};

// The chunk's sum of map(x / divisor) (for p = inf, the max |x|), in double. kRescaled: the
// second pass of a chunk whose plain sum left the safe range (multi_tensor_math.h), each element
// divided by the chunk's max |x| first; the plain pass divides by nothing. Four independent
// vector accumulators (one add chain each would bound the loop by the add latency, not by
// memory); half types widen to two float vectors.
template <typename scalar_t, NormKind K, bool kRescaled>
double chunk_sum(const scalar_t* x, int64_t n, at::opmath_type<scalar_t> p,
                 at::opmath_type<scalar_t> divisor) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<T>;
  using VS = Vectorized<scalar_t>;
  const NormOp<K, T> op{p};
  const VecNormStep<K, T> step{V(p)};
  const V vdivisor(divisor);
  const auto scaled = [&](V v) {
    if constexpr (kRescaled) v = v / vdivisor;
    return v;
  };
  V acc[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; i + 4 * V::size() <= n; i += 4 * V::size()) {
      for (int u = 0; u < 4; ++u) acc[u] = step(acc[u], scaled(V::loadu(x + i + u * V::size())));
    }
  } else {
    for (; i + 2 * VS::size() <= n; i += 2 * VS::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i + VS::size()));
      acc[0] = step(acc[0], scaled(a0));
      acc[1] = step(acc[1], scaled(a1));
      acc[2] = step(acc[2], scaled(b0));
      acc[3] = step(acc[3], scaled(b1));
    }
  }
  T tail = T(0);
  for (; i < n; ++i) {
    const T v = static_cast<T>(x[i]);
    tail = op.combine(tail, op.map(kRescaled ? v / divisor : v));
  }

  // Lanes and tail are combined in double.
  using D = NormOp<K, double>;
  T lanes[V::size()];
  double out = tail;
  for (int u = 0; u < 4; ++u) {
    acc[u].store(lanes);
    for (int l = 0; l < V::size(); ++l) out = D::combine(out, static_cast<double>(lanes[l]));
  }
  return out;
}

// max |x| of a chunk that holds no NaN (its sum would have been NaN), in double.
template <typename scalar_t>
double chunk_max_abs(const scalar_t* x, int64_t n) {
  return chunk_sum<scalar_t, NormKind::kLinf, false>(x, n, 0, 1);
}

// The chunk's partial: the plain pass; then, only where its sum left the safe range, a pass for
// the max |x| over the chunk just read (in cache) and, unless that settles it, the rescaled pass.
template <typename scalar_t, NormKind K>
NormPartial norm_partial(const scalar_t* x, int64_t n, double p) {
  using T = at::opmath_type<scalar_t>;
  using Op = NormOp<K, T>;
  NormPartial out;
  if (Op::partial_from_sum(chunk_sum<scalar_t, K, false>(x, n, T(p), T(1)), out)) return out;
  const double max_abs = chunk_max_abs(x, n);
  if (Op::partial_from_max(max_abs, out)) return out;
  // max_abs is one of the elements, widened to double: exact in T.
  return Op::rescaled_partial(max_abs,
                              chunk_sum<scalar_t, K, true>(x, n, T(p), static_cast<T>(max_abs)));
}

}  // namespace

// --- entry points

NormPartial multi_tensor_norm_kernel(c10::ScalarType dtype, const void* x, int64_t n, NormKind kind,
                                     double p) {
  NormPartial out{};
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "multi_tensor_norm", [&] {
    visit_norm_kind(kind, [&](auto tag) {
      out = norm_partial<scalar_t, decltype(tag)::value>(static_cast<const scalar_t*>(x), n, p);
    });
  });
  return out;
}

void multi_tensor_scale_kernel(c10::ScalarType dtype, void* x, int64_t n, double coef) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "multi_tensor_scale_", [&] {
    using T = at::opmath_type<scalar_t>;
    const Vectorized<T> vc(static_cast<T>(coef));
    auto* p = static_cast<scalar_t*>(x);
    map_unary(p, p, n, [vc](Vectorized<T> v) { return v * vc; });
  });
}

void multi_tensor_clamp_kernel(c10::ScalarType dtype, void* x, int64_t n, double lo, double hi) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "multi_tensor_clamp_", [&] {
    using T = at::opmath_type<scalar_t>;
    const Vectorized<T> vl(static_cast<T>(lo)), vh(static_cast<T>(hi));
    // maximum, then minimum: clamp_value's order; both propagate NaN, as clamp_value does.
    auto* p = static_cast<scalar_t*>(x);
    map_unary(p, p, n,
              [vl, vh](Vectorized<T> v) { return at::vec::minimum(at::vec::maximum(v, vl), vh); });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
