// The block-level pieces of the row kernels that softmax.cu and cross_entropy.cu share: the online
// (max, sum of exp) statistics merged across a warp and a block, a row's statistics and a map
// over a row read in 16-byte packs, and the launch shape of one block per row. Math and edge
// values: softmax_math.h.
//
// Everything here is in an unnamed namespace, as the file-local helpers they were: each .cu file
// that includes it compiles its own copy, inlined into its kernels as before.
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cuda/common.cuh"
#include "math/softmax_math.h"

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

// --- launch shape

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

}  // namespace
}  // namespace backprop_ext::cuda
