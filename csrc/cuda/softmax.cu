// The softmax family's CUDA kernels; the ops around them are csrc/ops/softmax.cpp's. Math,
// epilogues and edge values: softmax_math.h; the row statistics and the launch shape, shared
// with cross_entropy.cu: row_reduce.cuh.
//
// Last dim: one block per row. The first pass reads the row once, keeping per thread the online
// pair (max m, sum s of exp(x - m)), updated once per 16-byte pack (the pack's own max first, so
// one rescale per pack rather than per element); the pairs are merged across the block; the second
// pass writes. Rows of any length work, and re-reading a row just read mostly hits L2.
// Inner dim (dim is not the last): one thread per (outer, inner) column walks D with stride inner,
// so a warp reads 32 neighbouring columns at once.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "cuda/row_reduce.cuh"
#include "math/softmax_math.h"
#include "ops/softmax.h"

namespace backprop_ext::cuda {
namespace {

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

// f(col, base) for each column of this thread's grid-stride share: column col's D values lie at
// base + d * inner.
template <typename F>
__device__ __forceinline__ void for_each_column(int64_t outer, int64_t D, int64_t inner, F&& f) {
  const int64_t columns = outer * inner;
  for (int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; col < columns;
       col += int64_t(gridDim.x) * blockDim.x) {
    f(col, (col / inner) * D * inner + col % inner);
  }
}

// The running max and sum of exp(x - max) over one column.
template <typename T, typename scalar_t>
__device__ __forceinline__ OnlineStats<T> column_stats(const scalar_t* __restrict__ x, int64_t base,
                                                       int64_t D, int64_t inner) {
  OnlineStats<T> st;
  for (int64_t d = 0; d < D; ++d) st.add(static_cast<T>(x[base + d * inner]));
  return st;
}

template <template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_fwd_inner_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y,
                                         int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  for_each_column(outer, D, inner, [&](int64_t, int64_t base) {
    const OnlineStats<T> st = column_stats<T>(x, base, D, inner);
    const Epilogue<T> e(st.m, st.s);
    for (int64_t d = 0; d < D; ++d) {
      y[base + d * inner] = static_cast<scalar_t>(e(static_cast<T>(x[base + d * inner])));
    }
  });
}

template <template <typename> class Epilogue, typename scalar_t>
__global__ void softmax_bwd_inner_kernel(const scalar_t* __restrict__ g,
                                         const scalar_t* __restrict__ y, scalar_t* __restrict__ gx,
                                         int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  using E = Epilogue<T>;
  for_each_column(outer, D, inner, [&](int64_t, int64_t base) {
    T acc = T(0);
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      acc += E::reduce(static_cast<T>(g[i]), static_cast<T>(y[i]));
    }
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = base + d * inner;
      gx[i] = static_cast<scalar_t>(E::backward(static_cast<T>(g[i]), static_cast<T>(y[i]), acc));
    }
  });
}

template <typename scalar_t>
__global__ void logsumexp_inner_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                       int64_t outer, int64_t D, int64_t inner) {
  using T = at::opmath_type<scalar_t>;
  for_each_column(outer, D, inner, [&](int64_t col, int64_t base) {
    const OnlineStats<T> st = column_stats<T>(x, base, D, inner);
    out[col] = static_cast<scalar_t>(logsumexp_from_stats(st.m, st.s));
  });
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

// --- launchers

inline unsigned column_blocks(int64_t columns) {
  return elementwise_blocks(columns, kElementwiseThreads);
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

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(softmax_fwd_stub, CUDA, &softmax_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(softmax_bwd_stub, CUDA, &softmax_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_fwd_stub, CUDA, &logsumexp_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(logsumexp_bwd_stub, CUDA, &logsumexp_bwd_cuda);

}  // namespace backprop_ext::cuda
