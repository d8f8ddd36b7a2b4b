// The cross-entropy family's CUDA kernels; the ops around them are csrc/ops/cross_entropy.cpp's.
// Math and edge values: softmax_math.h; the row statistics and the launch shape, shared with
// softmax.cu: row_reduce.cuh.
//
// One block per row (row kernels loop past 2^31 - 1 rows); forward reads the row once (twice with
// label smoothing), backward reads it once and writes the gradient once.
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
#include "cuda/row_reduce.cuh"
#include "math/softmax_math.h"
#include "ops/cross_entropy.h"

namespace backprop_ext::cuda {
namespace {

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

// --- kernels of the stubs (cross_entropy.h)

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

BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_fwd_stub, CUDA, &cross_entropy_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_bwd_stub, CUDA, &cross_entropy_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(cross_entropy_reduce_stub, CUDA, &cross_entropy_reduce_cuda);

}  // namespace backprop_ext::cuda
