// The softmax family's CUDA kernels; the ops around them are csrc/ops/softmax.cpp's. Math,
// epilogues and edge values: softmax_math.h.
//
// Last dim: one block per row. The first pass reads the row once, keeping per thread the online
// pair (max m, sum s of exp(x - m)), updated once per 16-byte pack (the pack's own max first, so
// one rescale per pack rather than per element); the pairs are merged across the block; the second
// pass writes. Rows of any length work, and re-reading a row just read mostly hits L2.
// Inner dim (dim is not the last): one thread per (outer, inner) column walks D with stride inner,
// so a warp reads 32 neighbouring columns at once.
// Cross-entropy: one block per row (row kernels loop past 2^31 - 1 rows); forward reads the row
// once (twice with label smoothing), backward reads it once and writes the gradient once.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/clamp.h>
#include <ATen/ops/div.h>
#include <ATen/ops/gather.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ne.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/to.h>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "math/softmax_math.h"
#include "ops/softmax.h"

namespace backprop_ext::cuda {
namespace {

// --- block-level pieces

template <typename T>
__device__ OnlineStats<T> warp_merge(OnlineStats<T> st) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    OnlineStats<T> other;
    other.m = __shfl_xor_sync(kFullMask, st.m, offset);
    other.s = __shfl_xor_sync(kFullMask, st.s, offset);
    st.merge(other);
  }
  return st;
}

// The row's (m, s), returned to every thread.
template <typename T>
__device__ OnlineStats<T> block_merge(OnlineStats<T> st) {
  __shared__ T part_m[32], part_s[32], total_m, total_s;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  st = warp_merge(st);
  if (lane == 0) {
    part_m[warp] = st.m;
    part_s[warp] = st.s;
  }
  __syncthreads();
  if (warp == 0) {
    OnlineStats<T> w;
    if (lane < int(blockDim.x / 32)) {
      w.m = part_m[lane];
      w.s = part_s[lane];
    }
    w = warp_merge(w);
    if (lane == 0) {
      total_m = w.m;
      total_s = w.s;
    }
  }
  __syncthreads();
  OnlineStats<T> total;
  total.m = total_m;
  total.s = total_s;
  return total;
}

// Adds a pack of kVec values to the running stats with a single rescale.
template <int kVec, typename T>
__device__ __forceinline__ void add_pack(OnlineStats<T>& st, const T (&v)[kVec]) {
  T pm = v[0];
#pragma unroll
  for (int k = 1; k < kVec; ++k) pm = max_nan(pm, v[k]);
  if (pm == neg_inf<T>()) return;  // all -inf: adds nothing
  OnlineStats<T> p;
  p.m = pm;
  p.s = T(0);
#pragma unroll
  for (int k = 0; k < kVec; ++k) p.s += math::exp(v[k] - pm);
  st.merge(p);
}

// Row stats over a row of D elements starting at `row` (kVec divides D; row is aligned).
template <int kVec, typename scalar_t, typename T = at::opmath_type<scalar_t>>
__device__ OnlineStats<T> row_stats(const scalar_t* __restrict__ row, int64_t D) {
  using P = Pack<scalar_t, kVec>;
  OnlineStats<T> st;
  for (int64_t p = threadIdx.x; p < D / kVec; p += blockDim.x) {
    const P pack = reinterpret_cast<const P*>(row)[p];
    T v[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = static_cast<T>(pack.v[k]);
    add_pack<kVec>(st, v);
  }
  return block_merge(st);
}

// out[i] = f(in[i]) over a row, pack by pack.
template <int kVec, typename scalar_t, typename F>
__device__ void row_map(const scalar_t* __restrict__ in, scalar_t* __restrict__ out, int64_t D,
                        const F& f) {
  using P = Pack<scalar_t, kVec>;
  using T = at::opmath_type<scalar_t>;
  for (int64_t p = threadIdx.x; p < D / kVec; p += blockDim.x) {
    const P a = reinterpret_cast<const P*>(in)[p];
    P o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) o.v[k] = static_cast<scalar_t>(f(static_cast<T>(a.v[k])));
    reinterpret_cast<P*>(out)[p] = o;
  }
}

// --- kernels: last dim

template <int kVec, template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_fwd_lastdim_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                           int64_t rows, int64_t D) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * D;
    const OnlineStats<T> st = row_stats<kVec>(x + off, D);
    row_map<kVec>(x + off, y + off, D, Epilogue<T>(st.m, st.s));
  }
}

template <int kVec, template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_bwd_lastdim_kernel(const scalar_t* __restrict__ g,
                                           const scalar_t* __restrict__ y,
                                           scalar_t* __restrict__ gx, int64_t rows, int64_t D) {
  using T = at::opmath_type<scalar_t>;
  using E = Epilogue<T>;
  using P = Pack<scalar_t, kVec>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * D;
    const P* gp = reinterpret_cast<const P*>(g + off);
    const P* yp = reinterpret_cast<const P*>(y + off);
    P* gxp = reinterpret_cast<P*>(gx + off);
    T acc = T(0);
    for (int64_t p = threadIdx.x; p < D / kVec; p += blockDim.x) {
      const P a = gp[p], b = yp[p];
#pragma unroll
      for (int k = 0; k < kVec; ++k)
        acc += E::reduce(static_cast<T>(a.v[k]), static_cast<T>(b.v[k]));
    }
    acc = block_sum(acc);
    for (int64_t p = threadIdx.x; p < D / kVec; p += blockDim.x) {
      const P a = gp[p], b = yp[p];
      P o;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        o.v[k] =
            static_cast<scalar_t>(E::backward(static_cast<T>(a.v[k]), static_cast<T>(b.v[k]), acc));
      }
      gxp[p] = o;
    }
  }
}

template <int kVec, typename scalar_t>
__global__ void logsumexp_lastdim_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                         int64_t rows, int64_t D) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const OnlineStats<T> st = row_stats<kVec>(x + row * D, D);
    if (threadIdx.x == 0) out[row] = static_cast<scalar_t>(logsumexp_from_stats(st.m, st.s));
  }
}

// --- kernels: inner dim, one thread per (outer, inner) column

template <template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_fwd_inner_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                         int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  const int64_t columns = outer * inner;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < columns;
       col += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (col / inner) * D * inner + col % inner;
    OnlineStats<T> st;
    for (int64_t d = 0; d < D; ++d) st.add(static_cast<T>(x[base + d * inner]));
    const Epilogue<T> e(st.m, st.s);
    for (int64_t d = 0; d < D; ++d) {
      y[base + d * inner] = static_cast<scalar_t>(e(static_cast<T>(x[base + d * inner])));
    }
  }
}

template <template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_bwd_inner_kernel(const scalar_t* __restrict__ g,
                                         const scalar_t* __restrict__ y, scalar_t* __restrict__ gx,
                                         int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  using E = Epilogue<T>;
  const int64_t columns = outer * inner;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < columns;
       col += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (col / inner) * D * inner + col % inner;
    T acc = T(0);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      acc += E::reduce(static_cast<T>(g[i]), static_cast<T>(y[i]));
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      gx[i] = static_cast<scalar_t>(E::backward(static_cast<T>(g[i]), static_cast<T>(y[i]), acc));
    }
  }
}

template <typename scalar_t>
__global__ void logsumexp_inner_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                       int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  const int64_t columns = outer * inner;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < columns;
       col += int64_t(gridDim.x) * blockDim.x) {
    const int64_t base = (col / inner) * D * inner + col % inner;
    OnlineStats<T> st;
    for (int64_t d = 0; d < D; ++d) st.add(static_cast<T>(x[base + d * inner]));
    out[col] = static_cast<scalar_t>(logsumexp_from_stats(st.m, st.s));
  }
}

// dx = g exp(x - result), g and result indexed by (outer, inner).
template <typename scalar_t>
__global__ void logsumexp_bwd_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ x,
                                     const scalar_t* __restrict__ r, scalar_t* __restrict__ gx,
                                     int64_t n, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t col = (i / (D * inner)) * inner + i % inner;
    gx[i] = static_cast<scalar_t>(static_cast<T>(g[col]) *
                                  math::exp(static_cast<T>(x[i]) - static_cast<T>(r[col])));
  }
}

// --- kernels: cross-entropy, one block per row

template <int kVec, typename scalar_t, typename T = at::opmath_type<scalar_t>>
__device__ void cross_entropy_fwd_row(int64_t row, const scalar_t* __restrict__ logits,
                                      const int64_t* __restrict__ target,
                                      const scalar_t* __restrict__ weight, int64_t C,
                                      int64_t ignore_index, T* __restrict__ nll,
                                      T* __restrict__ smooth, T* __restrict__ lse) {
  using P = Pack<scalar_t, kVec>;
  const int64_t t = target[row];
  if (t == ignore_index) {
    if (threadIdx.x == 0) {
      nll[row] = T(0);
      lse[row] = T(0);
      if (smooth) smooth[row] = T(0);
    }
    return;
  }
  CUDA_KERNEL_ASSERT(t >= 0 && t < C && "cross_entropy_fwd: target out of bounds");
  const scalar_t* x = logits + row * C;
  const OnlineStats<T> st = row_stats<kVec>(x, C);
  const T m = st.m, log_s = math::log(st.s);
  if (smooth) {
    // sum_c w_c ((m - x_c) + log s), i.e. w_c (-log_softmax_c): every term >= 0, no
    // cancellation. A second read of the row.
    T acc = T(0);
    for (int64_t p = threadIdx.x; p < C / kVec; p += blockDim.x) {
      const P a = reinterpret_cast<const P*>(x)[p];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const T w = weight ? static_cast<T>(weight[p * kVec + k]) : T(1);
        acc += w * ((m - static_cast<T>(a.v[k])) + log_s);  // w_c (-log_softmax_c)
      }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) smooth[row] = acc;
  }
  if (threadIdx.x == 0) {
    lse[row] = m + log_s;
    nll[row] = -((static_cast<T>(x[t]) - m) - log_s);  // -log_softmax, in torch's order
  }
}

template <int kVec, typename scalar_t, typename T = at::opmath_type<scalar_t>>
__global__ void cross_entropy_fwd_kernel(const scalar_t* __restrict__ logits,
                                         const int64_t* __restrict__ target,
                                         const scalar_t* __restrict__ weight, int64_t rows,
                                         int64_t C, int64_t ignore_index, T* __restrict__ nll,
                                         T* __restrict__ smooth, T* __restrict__ lse) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    cross_entropy_fwd_row<kVec>(row, logits, target, weight, C, ignore_index, nll, smooth, lse);
  }
}

// dx_c = (a + b W) exp(x_c - lse) - b w_c - a [c == t], W = sum(w)
template <int kVec, typename scalar_t, typename T = at::opmath_type<scalar_t>>
__device__ void cross_entropy_bwd_row(int64_t row, const scalar_t* __restrict__ logits,
                                      const int64_t* __restrict__ target,
                                      const scalar_t* __restrict__ weight,
                                      const T* __restrict__ lse, const T* __restrict__ grad_nll,
                                      const T* __restrict__ grad_smooth, T W, int64_t C,
                                      int64_t ignore_index, scalar_t* __restrict__ grad_logits) {
  using P = Pack<scalar_t, kVec>;
  const int64_t t = target[row];
  const P* x = reinterpret_cast<const P*>(logits + row * C);
  P* gx = reinterpret_cast<P*>(grad_logits + row * C);
  if (t == ignore_index) {
    P zero;
#pragma unroll
    for (int k = 0; k < kVec; ++k) zero.v[k] = scalar_t(0);
    for (int64_t p = threadIdx.x; p < C / kVec; p += blockDim.x) gx[p] = zero;
    return;
  }
  // The target indexes the row: one outside [0, C) fails the launch (a device-side assert, as
  // torch's own kernels do), never a silent wrong gradient. No host sync is needed to check it.
  CUDA_KERNEL_ASSERT(t >= 0 && t < C && "cross_entropy_bwd: target out of bounds");
  const T a = grad_nll[row];
  const T b = grad_smooth ? grad_smooth[row] : T(0);
  const T k_coef = a + b * W, row_lse = lse[row];
  for (int64_t p = threadIdx.x; p < C / kVec; p += blockDim.x) {
    const P in = x[p];
    P o;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      const int64_t c = p * kVec + k;
      const T w = weight ? static_cast<T>(weight[c]) : T(1);
      T v = k_coef * math::exp(static_cast<T>(in.v[k]) - row_lse) - b * w;
      if (c == t) v -= a;
      o.v[k] = static_cast<scalar_t>(v);
    }
    gx[p] = o;
  }
}

template <int kVec, typename scalar_t, typename T = at::opmath_type<scalar_t>>
__global__ void cross_entropy_bwd_kernel(
    const scalar_t* __restrict__ logits, const int64_t* __restrict__ target,
    const scalar_t* __restrict__ weight, const T* __restrict__ lse, const T* __restrict__ grad_nll,
    const T* __restrict__ grad_smooth, const T* __restrict__ total_weight, int64_t rows, int64_t C,
    int64_t ignore_index, scalar_t* __restrict__ grad_logits) {
  const T W = total_weight ? *total_weight : static_cast<T>(C);  // sum(w); C without weights
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    cross_entropy_bwd_row<kVec>(row, logits, target, weight, lse, grad_nll, grad_smooth, W, C,
                                ignore_index, grad_logits);
  }
}

// --- launchers

// 16-byte packs when every row starts 16-byte aligned, single elements otherwise.
template <typename scalar_t>
int pack_width(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  if (D % kVec != 0) return 1;
  for (const void* p : ptrs) {
    if (p != nullptr && !is_aligned(p, 16)) return 1;
  }
  return kVec;
}

// Threads per row-block: enough for one pack each up to 1024, a multiple of 32.
inline int row_threads(int64_t packs) {
  const int64_t t = std::min<int64_t>(1024, std::max<int64_t>(32, (packs + 31) / 32 * 32));
  return static_cast<int>(t);
}

inline unsigned column_blocks(int64_t columns) {
  return elementwise_blocks(columns, kElementwiseThreads);
}

// One block per row, up to the grid's limit; row kernels loop when there are more rows.
inline unsigned row_blocks(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>(rows, (int64_t(1) << 31) - 1));
}

// Calls f(std::integral_constant<int, kVec>) for the chosen pack width.
template <typename scalar_t, typename F>
void with_pack_width(int vec, const F& f) {
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  if (vec == kVec) {
    f(std::integral_constant<int, kVec>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// --- kernels of the stubs (softmax.h)

void softmax_fwd_cuda(const at::Tensor& x, at::Tensor& y, const ReductionShape& s, bool log) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "softmax_fwd", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    visit_softmax_epilogue(log, [&](auto epilogue) {
      if (s.inner == 1) {
        with_pack_width<scalar_t>(pack_width<scalar_t>(s.D, {xp, yp}), [&](auto kv) {
          constexpr int kVec = decltype(kv)::value;
          softmax_fwd_lastdim_kernel<kVec, decltype(epilogue)::template type>
              <<<row_blocks(s.outer), row_threads(s.D / kVec), 0, stream>>>(xp, yp, s.outer, s.D);
        });
      } else {
        softmax_fwd_inner_kernel<decltype(epilogue)::template type>
            <<<column_blocks(s.outer * s.inner), kElementwiseThreads, 0, stream>>>(xp, yp, s.outer,
                                                                                   s.D, s.inner);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void softmax_bwd_cuda(const at::Tensor& g, const at::Tensor& y, at::Tensor& gx,
                      const ReductionShape& s, bool log) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(y.scalar_type(), "softmax_bwd", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    visit_softmax_epilogue(log, [&](auto epilogue) {
      if (s.inner == 1) {
        with_pack_width<scalar_t>(pack_width<scalar_t>(s.D, {gp, yp, gxp}), [&](auto kv) {
          constexpr int kVec = decltype(kv)::value;
          softmax_bwd_lastdim_kernel<kVec, decltype(epilogue)::template type>
              <<<row_blocks(s.outer), row_threads(s.D / kVec), 0, stream>>>(gp, yp, gxp, s.outer,
                                                                            s.D);
        });
      } else {
        softmax_bwd_inner_kernel<decltype(epilogue)::template type>
            <<<column_blocks(s.outer * s.inner), kElementwiseThreads, 0, stream>>>(
                gp, yp, gxp, s.outer, s.D, s.inner);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void logsumexp_fwd_cuda(const at::Tensor& x, at::Tensor& out, const ReductionShape& s) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "logsumexp_fwd", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (s.inner == 1) {
      with_pack_width<scalar_t>(pack_width<scalar_t>(s.D, {xp}), [&](auto kv) {
        constexpr int kVec = decltype(kv)::value;
        logsumexp_lastdim_kernel<kVec>
            <<<row_blocks(s.outer), row_threads(s.D / kVec), 0, stream>>>(xp, op, s.outer, s.D);
      });
    } else {
      logsumexp_inner_kernel<<<column_blocks(s.outer * s.inner), kElementwiseThreads, 0, stream>>>(
          xp, op, s.outer, s.D, s.inner);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void logsumexp_bwd_cuda(const at::Tensor& g, const at::Tensor& x, const at::Tensor& r,
                        at::Tensor& gx, const ReductionShape& s) {
  const int64_t n = x.numel();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "logsumexp_bwd", [&] {
    logsumexp_bwd_kernel<<<column_blocks(n), kElementwiseThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
        gx.mutable_data_ptr<scalar_t>(), n, s.D, s.inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cross_entropy_fwd_cuda(const at::Tensor& x, const at::Tensor& t, const at::Tensor& w,
                            int64_t ignore_index, at::Tensor& nll, at::Tensor& smooth,
                            at::Tensor& lse) {
  const int64_t N = x.size(0), C = x.size(1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "cross_entropy_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    with_pack_width<scalar_t>(pack_width<scalar_t>(C, {xp}), [&](auto kv) {
      constexpr int kVec = decltype(kv)::value;
      cross_entropy_fwd_kernel<kVec><<<row_blocks(N), row_threads(C / kVec), 0, stream>>>(
          xp, t.const_data_ptr<int64_t>(), w.defined() ? w.const_data_ptr<scalar_t>() : nullptr, N,
          C, ignore_index, nll.mutable_data_ptr<T>(),
          smooth.defined() ? smooth.mutable_data_ptr<T>() : nullptr, lse.mutable_data_ptr<T>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void cross_entropy_bwd_cuda(const at::Tensor& x, const at::Tensor& t, const at::Tensor& w,
                            const at::Tensor& lse, const at::Tensor& grad_nll,
                            const at::Tensor& grad_smooth, int64_t ignore_index, at::Tensor& grad) {
  const int64_t N = x.size(0), C = x.size(1);
  // sum(w) weighs the smoothing term; it stays on the device (reading it back would stall).
  const at::Tensor total_weight = (w.defined() && grad_smooth.defined())
                                      ? at::sum(w, at::toOpMathType(w.scalar_type()))
                                      : at::Tensor();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  BACKPROP_EXT_DISPATCH_FLOATS(x.scalar_type(), "cross_entropy_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad.mutable_data_ptr<scalar_t>();
    with_pack_width<scalar_t>(pack_width<scalar_t>(C, {xp, gxp}), [&](auto kv) {
      constexpr int kVec = decltype(kv)::value;
      cross_entropy_bwd_kernel<kVec><<<row_blocks(N), row_threads(C / kVec), 0, stream>>>(
          xp, t.const_data_ptr<int64_t>(), w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
          lse.const_data_ptr<T>(), grad_nll.const_data_ptr<T>(),
          grad_smooth.defined() ? grad_smooth.const_data_ptr<T>() : nullptr,
          total_weight.defined() ? total_weight.const_data_ptr<T>() : nullptr, N, C, ignore_index,
          gxp);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// N values: a few of ATen's elementwise ops and reductions (on the current stream, capturable in
// a CUDA graph) rather than a kernel of ours.
void cross_entropy_reduce_cuda(const at::Tensor& target, const at::Tensor& weight,
                               const at::Tensor& nll, const at::Tensor& smooth,
                               int64_t ignore_index, double eps, int64_t C, Reduction reduction,
                               at::Tensor& loss, at::Tensor& total) {
  const at::Tensor keep = target.ne(ignore_index);
  const at::Tensor w = weight.defined() ? weight.gather(0, target.clamp(0, C - 1)).mul(keep)
                                        : keep.to(nll.scalar_type());
  at::sum_out(total, w);
  const double smooth_scale = eps / static_cast<double>(C);
  if (reduction == Reduction::kNone) {
    at::Tensor rows = nll.mul(w).mul_(1.0 - eps);  // nll is 0 on ignored rows, as is smooth
    if (smooth.defined()) rows.add_(smooth, smooth_scale);
    loss.copy_(rows);
    return;
  }
  // A mean divides both terms by the total weight of the counted targets, as torch: a zero
  // total gives torch's NaN (a smoothing term over it alone would give inf).
  at::sum_out(loss, nll.mul(w));
  if (reduction == Reduction::kMean) loss.div_(total);
  loss.mul_(1.0 - eps);
  if (smooth.defined()) {
    at::Tensor smooth_sum = smooth.sum();
    if (reduction == Reduction::kMean) smooth_sum.div_(total);
    loss.add_(smooth_sum, smooth_scale);
  }
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(softmax_fwd_stub, CUDA, &softmax_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(softmax_bwd_stub, CUDA, &softmax_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_fwd_stub, CUDA, &logsumexp_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_bwd_stub, CUDA, &logsumexp_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_fwd_stub, CUDA, &cross_entropy_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_bwd_stub, CUDA, &cross_entropy_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_reduce_stub, CUDA, &cross_entropy_reduce_cuda);

}  // namespace backprop_ext::cuda
