// The elementwise passes of a linear layer that BLAS cannot fuse, vectorized with at::vec and
// compiled once per ISA (see setup.py and isa.h):
//
//   forward:   y = act(z + b)                    after the GEMM z = x W^T
//   backward:  gz = gy * act'(s),  gb = sum_rows gz   in one read of gy and s
//
// The vector math is vec_math.h's (shared with the activation family); scalar tails call
// activation_math.h's functors. Half types compute in float.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "../dispatch.h"
#include "linear_kernels.h"
#include "vec_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

// Rows summed into a group accumulator before it joins the tile's total: a two-level sum, so the
// rounding error of a bias gradient grows with kGroupRows + rows / kGroupRows, not with rows.
constexpr int64_t kGroupRows = 32;

// The biased pre-activation as a dtype value, back in opmath: what a GEMM with the bias folded in
// stores, so y = act(z) sees exactly the z that backward will read.
template <typename scalar_t, typename T>
inline T round_to(T v) {
  return static_cast<T>(static_cast<scalar_t>(v));
}

// --- forward: y = act(z + b)

template <typename scalar_t, Activation A, bool kBias>
void bias_act_fwd_rows(scalar_t* z, scalar_t* y, const scalar_t* bias, int64_t rows, int64_t cols,
                       double p0, double p1) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  const ActivationForward<A, T> f{T(p0), T(p1)};
  const VecForward<A, T> vf{T(p0), T(p1)};
  const bool keep_z = y != z;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* zr = z + r * cols;
    scalar_t* yr = y + r * cols;
    int64_t c = 0;
    for (; c + V::size() <= cols; c += V::size()) {
      V zv = V::loadu(zr + c);
      if constexpr (std::is_same_v<scalar_t, T>) {
        if constexpr (kBias) {
          zv = zv + V::loadu(bias + c);
          if (keep_z) zv.store(zr + c);
        }
        vf(zv).store(yr + c);
      } else {
        if constexpr (kBias) {
          auto [z_lo, z_hi] = at::vec::convert_to_float<scalar_t>(zv);
          auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(bias + c));
          zv = at::vec::convert_from_float<scalar_t>(z_lo + b_lo, z_hi + b_hi);
          if (keep_z) zv.store(zr + c);
        }
        auto [lo, hi] = at::vec::convert_to_float<scalar_t>(zv);
        at::vec::convert_from_float<scalar_t>(vf(lo), vf(hi)).store(yr + c);
      }
    }
    for (; c < cols; ++c) {
      T v = static_cast<T>(zr[c]);
      if constexpr (kBias) {
        v = round_to<scalar_t>(v + static_cast<T>(bias[c]));
        if (keep_z) zr[c] = static_cast<scalar_t>(v);
      }
      yr[c] = static_cast<scalar_t>(f(v));
    }
  }
}

// --- backward: gz = gy * act'(s) and the column sums of gz

// One row: gz[c] = gy[c] * act'(s[c]); with kSum, also acc[c] += gz[c] (unrounded, in opmath).
template <typename scalar_t, Activation A, bool kSum>
inline void bias_act_bwd_row(const scalar_t* g, const scalar_t* s, scalar_t* gz,
                             at::opmath_type<scalar_t>* acc, int64_t cols,
                             const ActivationBackward<A, at::opmath_type<scalar_t>>& f,
                             const VecBackward<A, at::opmath_type<scalar_t>>& vf) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  using VT = Vectorized<T>;
  int64_t c = 0;
  for (; c + V::size() <= cols; c += V::size()) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      const V d = vf(V::loadu(g + c), V::loadu(s + c));
      d.store(gz + c);
      if constexpr (kSum) (VT::loadu(acc + c) + d).store(acc + c);
    } else {
      auto [g_lo, g_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(g + c));
      auto [s_lo, s_hi] = at::vec::convert_to_float<scalar_t>(V::loadu(s + c));
      const VT d_lo = vf(g_lo, s_lo);
      const VT d_hi = vf(g_hi, s_hi);
      at::vec::convert_from_float<scalar_t>(d_lo, d_hi).store(gz + c);
      if constexpr (kSum) {
        (VT::loadu(acc + c) + d_lo).store(acc + c);
        (VT::loadu(acc + c + VT::size()) + d_hi).store(acc + c + VT::size());
      }
    }
  }
  for (; c < cols; ++c) {
    const T d = f(static_cast<T>(g[c]), static_cast<T>(s[c]));
    gz[c] = static_cast<scalar_t>(d);
    if constexpr (kSum) acc[c] += d;
  }
}

template <typename T>
inline void add_into(T* total, const T* part, int64_t n) {
  using VT = Vectorized<T>;
  int64_t c = 0;
  for (; c + VT::size() <= n; c += VT::size()) {
    (VT::loadu(total + c) + VT::loadu(part + c)).store(total + c);
  }
  for (; c < n; ++c) total[c] += part[c];
}

template <typename scalar_t, Activation A>
void bias_act_bwd_tile(const scalar_t* g, const scalar_t* s, scalar_t* gz,
                       at::opmath_type<scalar_t>* partial, int64_t rows, int64_t cols, int64_t ld,
                       double p0, double p1) {
  using T = at::opmath_type<scalar_t>;
  const ActivationBackward<A, T> f{T(p0), T(p1)};
  const VecBackward<A, T> vf{T(p0), T(p1)};
  if (partial == nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      bias_act_bwd_row<scalar_t, A, false>(g + r * ld, s + r * ld, gz + r * ld, nullptr, cols, f,
                                           vf);
    }
    return;
  }
  alignas(64) T group[kLinearMaxTileCols];
  std::fill_n(partial, cols, T(0));
  for (int64_t r0 = 0; r0 < rows; r0 += kGroupRows) {
    std::fill_n(group, cols, T(0));
    const int64_t r1 = std::min(rows, r0 + kGroupRows);
    for (int64_t r = r0; r < r1; ++r) {
      bias_act_bwd_row<scalar_t, A, true>(g + r * ld, s + r * ld, gz + r * ld, group, cols, f, vf);
    }
    add_into(partial, group, cols);
  }
}

}  // namespace

// --- entry points

void bias_act_fwd_kernel(c10::ScalarType dtype, void* z, void* y, const void* bias, int64_t rows,
                         int64_t cols, Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "linear_fwd", [&] {
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      auto* zp = static_cast<scalar_t*>(z);
      auto* yp = static_cast<scalar_t*>(y);
      const auto* bp = static_cast<const scalar_t*>(bias);
      if (bp != nullptr) {
        bias_act_fwd_rows<scalar_t, A, true>(zp, yp, bp, rows, cols, p0, p1);
      } else {
        bias_act_fwd_rows<scalar_t, A, false>(zp, yp, bp, rows, cols, p0, p1);
      }
    });
  });
}

void bias_act_bwd_kernel(c10::ScalarType dtype, const void* grad_output, const void* saved,
                         void* grad_preact, void* partial, int64_t rows, int64_t cols, int64_t ld,
                         Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(dtype, "linear_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      bias_act_bwd_tile<scalar_t, A>(static_cast<const scalar_t*>(grad_output),
                                     static_cast<const scalar_t*>(saved),
                                     static_cast<scalar_t*>(grad_preact), static_cast<T*>(partial),
                                     rows, cols, ld, p0, p1);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
