// The gated family's CUDA kernels: y = f(gate) * up, and (grad_gate, grad_up) from grad, gate and
// up with f(gate) recomputed; one elementwise pass each in opmath precision, 16-byte loads and
// stores where every pointer allows. The math is gated.h's (activation_math.h's rows); the ops
// around them are csrc/ops/gated.cpp's.
#include <ATen/core/Tensor.h>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "ops/gated.h"

namespace backprop_ext::cuda {
namespace {

// --- kernels

// (grad_gate[i], grad_up[i]) = op(grad[i], gate[i], up[i]), kVec elements per load.
template <int kVec, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kElementwiseThreads)
    gated_bwd_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ gate,
                     const scalar_t* __restrict__ up, scalar_t* __restrict__ grad_gate,
                     scalar_t* __restrict__ grad_up, int64_t n, Op op) {
  using opmath_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t n_packs = n / kVec;
  const int64_t step = int64_t(gridDim.x) * blockDim.x * kElementwiseUnroll;
  for (int64_t base = int64_t(blockIdx.x) * blockDim.x * kElementwiseUnroll + threadIdx.x;
       base < n_packs; base += step) {
    P in_d[kElementwiseUnroll], in_g[kElementwiseUnroll], in_u[kElementwiseUnroll];
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) {
        in_d[u] = reinterpret_cast<const P*>(grad)[p];
        in_g[u] = reinterpret_cast<const P*>(gate)[p];
        in_u[u] = reinterpret_cast<const P*>(up)[p];
      }
    }
#pragma unroll
    for (int u = 0; u < kElementwiseUnroll; ++u) {
      const int64_t p = base + int64_t(u) * blockDim.x;
      if (p < n_packs) {
        P out_g, out_u;
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          opmath_t dg;
          out_u.v[k] = static_cast<scalar_t>(op(static_cast<opmath_t>(in_d[u].v[k]),
                                                static_cast<opmath_t>(in_g[u].v[k]),
                                                static_cast<opmath_t>(in_u[u].v[k]), dg));
          out_g.v[k] = static_cast<scalar_t>(dg);
        }
        reinterpret_cast<P*>(grad_gate)[p] = out_g;
        reinterpret_cast<P*>(grad_up)[p] = out_u;
      }
    }
  }
  // The n % kVec elements past the last full pack.
  const int64_t tail = n_packs * kVec + int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) {
    opmath_t dg;
    grad_up[tail] = static_cast<scalar_t>(op(static_cast<opmath_t>(grad[tail]),
                                             static_cast<opmath_t>(gate[tail]),
                                             static_cast<opmath_t>(up[tail]), dg));
    grad_gate[tail] = static_cast<scalar_t>(dg);
  }
}

// --- launchers

template <typename scalar_t, typename Op>
void launch_gated_bwd(const scalar_t* grad, const scalar_t* gate, const scalar_t* up,
                      scalar_t* grad_gate, scalar_t* grad_up, int64_t n, Op op) {
  constexpr int kVec = kVecFor16Bytes<scalar_t>;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int per_block = kElementwiseThreads * kElementwiseUnroll;
  if (is_aligned(grad, 16) && is_aligned(gate, 16) && is_aligned(up, 16) &&
      is_aligned(grad_gate, 16) && is_aligned(grad_up, 16)) {
    gated_bwd_kernel<kVec>
        <<<elementwise_blocks(n / kVec, per_block), kElementwiseThreads, 0, stream>>>(
            grad, gate, up, grad_gate, grad_up, n, op);
  } else {
    gated_bwd_kernel<1><<<elementwise_blocks(n, per_block), kElementwiseThreads, 0, stream>>>(
        grad, gate, up, grad_gate, grad_up, n, op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gated_fwd_cuda(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out, Activation act,
                    double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(gate.scalar_type(), "gated_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_binary(gate.const_data_ptr<scalar_t>(), up.const_data_ptr<scalar_t>(),
                    out.mutable_data_ptr<scalar_t>(), gate.numel(),
                    GatedForward<A, T>{T(p0), T(p1)});
    });
  });
}

void gated_bwd_cuda(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up,
                    at::Tensor& grad_gate, at::Tensor& grad_up, Activation act, double p0,
                    double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(grad.scalar_type(), "gated_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_gated_bwd(grad.const_data_ptr<scalar_t>(), gate.const_data_ptr<scalar_t>(),
                       up.const_data_ptr<scalar_t>(), grad_gate.mutable_data_ptr<scalar_t>(),
                       grad_up.mutable_data_ptr<scalar_t>(), grad.numel(),
                       GatedBackward<A, T>{T(p0), T(p1)});
    });
  });
}

}  // namespace

// --- registration

BACKPROP_EXT_REGISTER_KERNEL(gated_fwd_stub, CUDA, &gated_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(gated_bwd_stub, CUDA, &gated_bwd_cuda);

}  // namespace backprop_ext::cuda
