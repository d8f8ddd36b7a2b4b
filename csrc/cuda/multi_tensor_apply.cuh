// Multi-tensor apply: one kernel launch runs a per-chunk job over many tensors.
//
// The host packs up to kMaxTensorsPerLaunch tensors' pointers, sizes and chunk offsets into a
// struct passed by value as the kernel argument: the metadata travels with the launch, with no
// device allocation, copy or sync. A chunk is kMultiTensorChunk elements of one tensor; block b
// of a launch takes chunks b, b + gridDim.x, ... of that launch. So a few launches cover hundreds
// of tensors of any sizes, and a large tensor is shared by every block.
//
// A job is a functor with
//   __device__ void operator()(void* data, int64_t begin, int64_t n, int64_t chunk) const
// called by all threads of a block for elements [begin, begin + n) of the tensor at `data`;
// `chunk` numbers the chunks of the whole multi-launch call (for per-chunk outputs).
// Every job here reads or updates its tensor in place, so one pointer per tensor suffices.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cuda/common.cuh"
#include "ops/multi_tensor.h"

namespace backprop_ext::cuda {

constexpr int kMaxTensorsPerLaunch = 128;
constexpr int kMultiTensorThreads = 512;

struct TensorListMeta {
  void* data[kMaxTensorsPerLaunch];
  int64_t numel[kMaxTensorsPerLaunch];
  int64_t chunk_start[kMaxTensorsPerLaunch + 1];  // prefix sums of the tensors' chunk counts
  int64_t first_chunk;                            // global number of this launch's chunk 0
  int n_tensors;
};
// Kernel arguments are limited to 4 KiB on the toolkits and GPUs torch supports; leave room for
// the job's own arguments.
static_assert(sizeof(TensorListMeta) <= 3584, "TensorListMeta must fit in the kernel arguments");

// --- kernel

template <typename Job>
__global__ void __launch_bounds__(kMultiTensorThreads)
    multi_tensor_apply_kernel(const TensorListMeta meta, const Job job) {
  const int64_t chunks = meta.chunk_start[meta.n_tensors];
  int t = 0;
  for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
    // A block visits its chunks in increasing order, so the tensor index only moves forward.
    while (c >= meta.chunk_start[t + 1]) ++t;
    const int64_t begin = (c - meta.chunk_start[t]) * kMultiTensorChunk;
    const int64_t left = meta.numel[t] - begin;
    job(meta.data[t], begin, left < kMultiTensorChunk ? left : kMultiTensorChunk,
        meta.first_chunk + c);
  }
}

// --- launcher

// Runs `job` over every chunk of `tensors` (one dtype; each dense and non-empty), in launches of
// at most kMaxTensorsPerLaunch tensors, on the current stream. Chunks are numbered from
// `first_chunk` on, tensor by tensor; returns the number after the last one.
template <typename Job>
int64_t multi_tensor_apply(const std::vector<at::Tensor>& tensors, int64_t first_chunk,
                           const Job& job) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Enough blocks to fill every SM (2048 resident threads each); more would only queue.
  const int64_t max_blocks = int64_t(sm_count()) * (2048 / kMultiTensorThreads);
  TensorListMeta meta;
  meta.n_tensors = 0;
  meta.chunk_start[0] = 0;
  meta.first_chunk = first_chunk;
  const auto launch = [&] {
    if (meta.n_tensors == 0) return;
    const int64_t chunks = meta.chunk_start[meta.n_tensors];
    const auto blocks = static_cast<unsigned>(std::min(chunks, max_blocks));
    // The arguments are copied at launch, so `meta` may be refilled right after.
    multi_tensor_apply_kernel<<<blocks, kMultiTensorThreads, 0, stream>>>(meta, job);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    meta.first_chunk += chunks;
    meta.n_tensors = 0;
  };
  for (const at::Tensor& t : tensors) {
    const int i = meta.n_tensors;
    meta.data[i] = t.data_ptr();
    meta.numel[i] = t.numel();
    meta.chunk_start[i + 1] = meta.chunk_start[i] + num_chunks(t.numel());
    meta.n_tensors = i + 1;
    if (meta.n_tensors == kMaxTensorsPerLaunch) launch();
  }
  launch();
  return meta.first_chunk;
}

// --- device helpers for jobs: a block's walk over one chunk, 16-byte packs where aligned

constexpr int kChunkUnroll = 4;  // packs in flight per thread

// This thread's share of x[0, n), kChunkUnroll 16-byte packs in flight where x is aligned, each
// value widened to opmath: f(v) for a read-only walk (Elem const), x[i] = f(x[i]) otherwise.
template <typename Elem, typename F>
__device__ __forceinline__ void chunk_walk(Elem* x, int64_t n, F&& f) {
  using scalar_t = std::remove_const_t<Elem>;
  using T = at::opmath_type<scalar_t>;
  constexpr bool kWrite = !std::is_const_v<Elem>;
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const auto visit = [&](scalar_t& v) {
    if constexpr (kWrite) {
      v = static_cast<scalar_t>(f(static_cast<T>(v)));
    } else {
      f(static_cast<T>(v));
    }
  };
  int64_t done = 0;
  if (is_aligned(x, 16)) {
    const int64_t packs = n / kVec;
    for (int64_t base = threadIdx.x; base < packs; base += int64_t(blockDim.x) * kChunkUnroll) {
      P in[kChunkUnroll];
#pragma unroll
      for (int u = 0; u < kChunkUnroll; ++u) {
        const int64_t k = base + int64_t(u) * blockDim.x;
        if (k < packs) in[u] = reinterpret_cast<const P*>(x)[k];
      }
#pragma unroll
      for (int u = 0; u < kChunkUnroll; ++u) {
        const int64_t k = base + int64_t(u) * blockDim.x;
        if (k < packs) {
#pragma unroll
          for (int j = 0; j < kVec; ++j) visit(in[u].v[j]);
          if constexpr (kWrite) reinterpret_cast<P*>(x)[k] = in[u];
        }
      }
    }
    done = packs * kVec;
  }
  for (int64_t i = done + threadIdx.x; i < n; i += blockDim.x) {
    scalar_t v = x[i];
    visit(v);
    if constexpr (kWrite) x[i] = v;
  }
}

// f(v) on this thread's share of x[0, n).
template <typename scalar_t, typename F>
__device__ __forceinline__ void chunk_read(const scalar_t* x, int64_t n, F&& f) {
  chunk_walk(x, n, f);
}

// x[i] = f(x[i]) on this thread's share of x[0, n).
template <typename scalar_t, typename F>
__device__ __forceinline__ void chunk_update(scalar_t* x, int64_t n, F&& f) {
  chunk_walk(x, n, f);
}

}  // namespace backprop_ext::cuda
