// The elementwise passes of a linear layer that BLAS cannot fuse, vectorized with at::vec and
// compiled once per ISA (see setup.py and isa.h):
//
//   forward:   y = act(z + b)                    after the GEMM z = x W^T
//   backward:  gz = gy * act'(s),  gb = sum_rows gz   in one read of gy and s
//
// The vector math is vec_math.h's (shared with the activation family), the loops vec_loops.h's:
// every column, the last partial vector's included, takes the same vector math as the
// activation family's kernels, so a fused layer's output and a separate activation's agree bit
// for bit. Half types compute in float.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

#include "core/dispatch.h"
#include "cpu/linear_kernels.h"
#include "cpu/vec_loops.h"
#include "cpu/vec_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

// Rows summed into a group accumulator before it joins the tile's total: a two-level sum, so the
// rounding error of a bias gradient grows with kGroupRows + rows / kGroupRows, not with rows.
constexpr int64_t kGroupRows = 32;

// --- forward: y = act(z + b)

template <typename scalar_t, Activation A, bool kBias>
void bias_act_fwd_rows(scalar_t* z, scalar_t* y, const scalar_t* bias, int64_t rows, int64_t cols,
                       double p0, double p1) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  const VecForward<A, T> vf{T(p0), T(p1)};
  const bool keep_z = y != z;
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* zr = z + r * cols;
    scalar_t* yr = y + r * cols;
    for_each_vector<scalar_t>(cols, [&](int64_t c, int64_t k) {
      V zv = load_n(zr + c, k);
      if constexpr (std::is_same_v<scalar_t, T>) {
        if constexpr (kBias) {
          zv = zv + load_n(bias + c, k);
          if (keep_z) zv.store(zr + c, k);
        }
        vf(zv).store(yr + c, k);
      } else {
        // z rounded to scalar_t, as a GEMM with the bias folded in stores it.
        if constexpr (kBias) {
          auto [z_lo, z_hi] = at::vec::convert_to_float<scalar_t>(zv);
          auto [b_lo, b_hi] = at::vec::convert_to_float<scalar_t>(load_n(bias + c, k));
          zv = at::vec::convert_from_float<scalar_t>(z_lo + b_lo, z_hi + b_hi);
          if (keep_z) zv.store(zr + c, k);
        }
        auto [lo, hi] = at::vec::convert_to_float<scalar_t>(zv);
        at::vec::convert_from_float<scalar_t>(vf(lo), vf(hi)).store(yr + c, k);
      }
    });
  }
}

// --- backward: gz = gy * act'(s) and the column sums of gz

// acc[0, k) += d, for the first k of d's lanes.
template <typename T>
inline void accumulate(T* acc, Vectorized<T> d, int64_t k) {
  if (k <= 0) return;
  const int64_t n = std::min<int64_t>(k, Vectorized<T>::size());
  (load_n(acc, n) + d).store(acc, n);
}

// One row: gz[c] = gy[c] * act'(s[c]); with kSum, also acc[c] += gz[c] (unrounded, in opmath).
template <typename scalar_t, Activation A, bool kSum>
inline void bias_act_bwd_row(const scalar_t* g, const scalar_t* s, scalar_t* gz,
                             at::opmath_type<scalar_t>* acc, int64_t cols,
                             const VecBackward<A, at::opmath_type<scalar_t>>& vf) {
  using T = at::opmath_type<scalar_t>;
  using V = Vectorized<scalar_t>;
  using VT = Vectorized<T>;
  for_each_vector<scalar_t>(cols, [&](int64_t c, int64_t k) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      const V d = vf(load_n(g + c, k), load_n(s + c, k));
      d.store(gz + c, k);
      if constexpr (kSum) accumulate(acc + c, d, k);
    } else {
      auto [g_lo, g_hi] = at::vec::convert_to_float<scalar_t>(load_n(g + c, k));
      auto [s_lo, s_hi] = at::vec::convert_to_float<scalar_t>(load_n(s + c, k));
      const VT d_lo = vf(g_lo, s_lo);
      const VT d_hi = vf(g_hi, s_hi);
      at::vec::convert_from_float<scalar_t>(d_lo, d_hi).store(gz + c, k);
      if constexpr (kSum) {
        accumulate(acc + c, d_lo, k);
        accumulate(acc + c + VT::size(), d_hi, k - VT::size());
      }
    }
  });
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
  const VecBackward<A, T> vf{T(p0), T(p1)};
  if (partial == nullptr) {
    for (int64_t r = 0; r < rows; ++r) {
      bias_act_bwd_row<scalar_t, A, false>(g + r * ld, s + r * ld, gz + r * ld, nullptr, cols, vf);
    }
    return;
  }
  alignas(64) T group[kLinearMaxTileCols];
  std::fill_n(partial, cols, T(0));
  for (int64_t r0 = 0; r0 < rows; r0 += kGroupRows) {
    std::fill_n(group, cols, T(0));
    const int64_t r1 = std::min(rows, r0 + kGroupRows);
    for (int64_t r = r0; r < r1; ++r) {
      bias_act_bwd_row<scalar_t, A, true>(g + r * ld, s + r * ld, gz + r * ld, group, cols, vf);
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
      bias_act_bwd_tile<scalar_t, A>(
          static_cast<const scalar_t*>(grad_output), static_cast<const scalar_t*>(saved),
          static_cast<scalar_t*>(grad_preact), static_cast<T*>(partial), rows, cols, ld, p0, p1);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace backprop_ext::cpu
