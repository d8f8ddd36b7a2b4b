// Vectorized multi-tensor loops (at::vec) over one chunk, compiled once per ISA with
// CPU_CAPABILITY set by setup.py. The scalar tails call multi_tensor_math.h's functions, which the
// vector code mirrors lane for lane.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../dispatch.h"
#include "multi_tensor_kernels.h"

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

// The chunk's partial, with four independent vector accumulators (one add chain each would
// bound the loop by the add latency, not by memory). Half types widen to two float vectors.
template <typename scalar_t, NormKind K>
double norm_partial(const scalar_t* x, int64_t n, double p) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<T>;
  using VS = Vectorized<scalar_t>;
  const NormOp<K, T> op{T(p)};
  const VecNormStep<K, T> step{V(T(p))};
  V acc[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, T>) {
    for (; i + 4 * V::size() <= n; i += 4 * V::size()) {
      for (int u = 0; u < 4; ++u) acc[u] = step(acc[u], V::loadu(x + i + u * V::size()));
    }
  } else {
    for (; i + 2 * VS::size() <= n; i += 2 * VS::size()) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i + VS::size()));
      acc[0] = step(acc[0], a0);
      acc[1] = step(acc[1], a1);
      acc[2] = step(acc[2], b0);
      acc[3] = step(acc[3], b1);
    }
  }
  T tail = T(0);
  for (; i < n; ++i) tail = op.combine(tail, op.map(static_cast<T>(x[i])));

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

// x[i] = op(x[i]) in place, in opmath.
template <typename scalar_t, typename ScalarOp, typename VecOp>
void map_inplace(scalar_t* x, int64_t n, const ScalarOp& op, const VecOp& vop) {
  using T = at::opmath_type<scalar_t>;
  using VS = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + VS::size() <= n; i += VS::size()) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      vop(VS::loadu(x + i)).store(x + i);
    } else {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(VS::loadu(x + i));
      at::vec::convert_from_float<scalar_t>(vop(lo), vop(hi)).store(x + i);
    }
  }
  for (; i < n; ++i) x[i] = static_cast<scalar_t>(op(static_cast<T>(x[i])));
}

}  // namespace

// --- entry points

double multi_tensor_norm_kernel(c10::ScalarType dtype, const void* x, int64_t n, NormKind kind,
                                double p) {
  double out = 0;
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
    const T c = static_cast<T>(coef);
    const Vectorized<T> vc(c);
    map_inplace(static_cast<scalar_t*>(x), n, [c](T v) { return v * c; },
                [vc](Vectorized<T> v) { return v * vc; });
  });
}

void multi_tensor_clamp_kernel(c10::ScalarType dtype, void* x, int64_t n, double lo, double hi) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "multi_tensor_clamp_", [&] {
    using T = at::opmath_type<scalar_t>;
    const T l = static_cast<T>(lo), h = static_cast<T>(hi);
    const Vectorized<T> vl(l), vh(h);
    // maximum/minimum propagate NaN, as clamp_value does.
    map_inplace(static_cast<scalar_t*>(x), n, [l, h](T v) { return clamp_value(v, l, h); },
                [vl, vh](Vectorized<T> v) {
                  return at::vec::minimum(at::vec::maximum(v, vl), vh);
                });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
