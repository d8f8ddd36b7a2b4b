// Vectorized cross-entropy loops (at::vec) over rows of C logits with class-index targets,
// compiled once per ISA with CPU_CAPABILITY set by setup.py. The math and the treatment of -inf,
// +inf and NaN are softmax_math.h's; the row loops are row_loops.h's (shared with
// softmax_kernels.cpp). A row is read while it sits in cache: for its max, for
// sum(exp(x - max)), and (with label smoothing) once more for the smoothing term; backward reads it
// once and writes its gradient once.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "core/dispatch.h"
#include "cpu/cross_entropy_kernels.h"
#include "cpu/row_loops.h"
#include "cpu/vec_loops.h"
#include "math/softmax_math.h"

namespace backprop_ext::cpu {
namespace CPU_CAPABILITY {  // DEFAULT, AVX2 or AVX512: see isa.h
namespace {

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
