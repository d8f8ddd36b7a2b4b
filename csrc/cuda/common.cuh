// CUDA helpers shared by every family: aligned vector packs, launch geometry, elementwise loops.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace backprop_ext::cuda {

// kVec elements moved by one 16-byte (or narrower) load/store.
template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
constexpr int kVecFor16Bytes = 16 / sizeof(T);

C10_HOST_DEVICE inline bool is_aligned(const void* p, int bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

inline int sm_count() {
  thread_local int device = -1, count = 0;
  int current = 0;
  C10_CUDA_CHECK(cudaGetDevice(&current));
  if (current != device) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, current));
    device = current;
  }
  return count;
}

constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseUnroll = 4;  // packs in flight per thread: enough to cover DRAM latency

// Grid for a grid-stride loop over `work` items, each block taking threads*unroll per step:
// as many blocks as needed, but no more than fill the device a few times over.
inline unsigned elementwise_blocks(int64_t work, int per_block) {
  const int64_t wanted = (work + per_block - 1) / per_block;
  const int64_t cap = int64_t(sm_count()) * (2048 / kElementwiseThreads) * 4;
  return static_cast<unsigned>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

// --- kernels: y[i] = op(x[i]) and y[i] = op(a[i], b[i]) in opmath, kVec elements per load.

template <int kVec, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kElementwiseThreads)
    unary_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t n, Op op) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t n_packs = n / kVec;
  const int64_t step = int64_t(gridDim.x) * blockDim.x * kElementwiseUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kElementwiseUnroll + threadIdx.x;
       base < n_packs; base += step) {
    P in[kElementwiseUnroll];
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) in[u] = reinterpret_cast<const P*>(x)[p];
    }
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) {
        P out;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          out.v[k] = static_cast<scalar_t>(op(static_cast<opmath_t>(in[u].v[k])));
        }
        reinterpret_cast<P*>(y)[p] = out;
      }
    }
  }
  // The n % kVec elements past the last full pack.
  const int64_t tail = n_packs * kVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) y[tail] = static_cast<scalar_t>(op(static_cast<opmath_t>(x[tail])));
}

template <int kVec, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kElementwiseThreads)
    binary_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                  scalar_t* __restrict__ y, int64_t n, Op op) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t n_packs = n / kVec;
  const int64_t step = int64_t(gridDim.x) * blockDim.x * kElementwiseUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kElementwiseUnroll + threadIdx.x;
       base < n_packs; base += step) {
    P in_a[kElementwiseUnroll], in_b[kElementwiseUnroll];
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) {
        in_a[u] = reinterpret_cast<const P*>(a)[p];
        in_b[u] = reinterpret_cast<const P*>(b)[p];
      }
    }
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) {
        P out;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          out.v[k] = static_cast<scalar_t>(
              op(static_cast<opmath_t>(in_a[u].v[k]), static_cast<opmath_t>(in_b[u].v[k])));
        }
        reinterpret_cast<P*>(y)[p] = out;
      }
    }
  }
  const int64_t tail = n_packs * kVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) {
    y[tail] =
        static_cast<scalar_t>(op(static_cast<opmath_t>(a[tail]), static_cast<opmath_t>(b[tail])));
  }
}

// --- reductions. Block sizes are multiples of 32; every thread of the block must call these.
//
// The one rule: a block reduction returns its result to every thread of the block. It
// synchronizes the block, and may be called again right after (it waits for the previous call's
// readers before reusing its shared memory).

constexpr unsigned kFullMask = 0xffffffffu;

// combine over the 32 lanes of a warp, returned to every lane.
template <typename T, typename Combine>
__device__ __forceinline__ T warp_reduce(T v, Combine combine) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = combine(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

// combine over the block, returned to every thread. `identity` (combine(identity, x) == x) fills
// the lanes past the block's last warp.
template <typename T, typename Combine>
__device__ T block_reduce(T v, Combine combine, T identity = T(0)) {
  __shared__ T partial[32];
  __shared__ T total;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_reduce(v, combine);
  __syncthreads();  // the previous call's readers are done with `partial` and `total`
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < int(blockDim.x / 32) ? partial[lane] : identity;
    v = warp_reduce(v, combine);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  return block_reduce(v, [](T a, T b) { return a + b; });
}

// --- launchers: 16-byte packs when every pointer allows it, single elements otherwise.

template <typename scalar_t, typename Op>
void launch_unary(const scalar_t* x, scalar_t* y, int64_t n, Op op) {
  if (n == 0) return;
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (is_aligned(x, 16) && is_aligned(y, 16)) {
    const unsigned blocks = elementwise_blocks(n / kVec, kElementwiseThreads * kElementwiseUnroll);
    unary_kernel<kVec><<<blocks, kElementwiseThreads, 0, stream>>>(x, y, n, op);
  } else {
    const unsigned blocks = elementwise_blocks(n, kElementwiseThreads * kElementwiseUnroll);
    unary_kernel<1><<<blocks, kElementwiseThreads, 0, stream>>>(x, y, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename Op>
void launch_binary(const scalar_t* a, const scalar_t* b, scalar_t* y, int64_t n, Op op) {
  if (n == 0) return;
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (is_aligned(a, 16) && is_aligned(b, 16) && is_aligned(y, 16)) {
    const unsigned blocks = elementwise_blocks(n / kVec, kElementwiseThreads * kElementwiseUnroll);
    binary_kernel<kVec><<<blocks, kElementwiseThreads, 0, stream>>>(a, b, y, n, op);
  } else {
    const unsigned blocks = elementwise_blocks(n, kElementwiseThreads * kElementwiseUnroll);
    binary_kernel<1><<<blocks, kElementwiseThreads, 0, stream>>>(a, b, y, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace backprop_ext::cuda
