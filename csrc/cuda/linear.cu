// The linear family's CUDA kernels: out = act(x W^T + b) and its backward. The ops around them
// (checks, the (M, K) view, allocation) are csrc/ops/linear.cpp's.
//
//   forward   z = x W^T + b          cuBLASLt, the bias added in its BIAS epilogue
//             y = act(z)             our elementwise kernel (in place on z when z is not kept)
//   backward  gz = gy act'(s)        our kernel, one read of gy and s, which also sums gz over the
//             gb = sum_rows gz       rows: fp32 partial sums per block, then a second small kernel
//                                    adding them in a fixed order (deterministic, no atomics)
//             gx = gz W, gW = gz^T x at::mm (cuBLAS under torch's own flags)
//   no activation: gb comes out of the weight-gradient GEMM's BGRADB epilogue.
//
// BACKPROP_EXT_LINEAR_EPILOGUE=cublaslt moves relu and gelu_tanh (cuBLASLt's GELU is the tanh
// form) into cuBLASLt's own epilogues: RELU_BIAS, and GELU_AUX_BIAS, which also writes the
// pre-activation as its aux output. Whether that beats GEMM + our kernel is for a GPU to measure;
// the default is "ours". If cuBLASLt has no algorithm for a case, the ATen route runs instead.
//
// x is the input flattened to (M, K), W the (N, K) weight, s the tensor forward saved (z, or y for
// relu, relu6, sigmoid and tanh). All row-major; cuBLASLt is column-major, so a row-major (R, C)
// matrix is handed to it as a column-major (C, R) one: see row_major_gemm.
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/cuda/Exceptions.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <tuple>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "ops/linear.h"

namespace backprop_ext::cuda {
namespace {

// --- kernels

constexpr int kBwdColThreads = 32;  // a warp along a row: coalesced loads of kVec-element packs
constexpr int kBwdRowThreads = 8;   // warps of a block, each on its own rows
constexpr int kBwdRowUnroll = 4;    // rows in flight per thread
constexpr int64_t kMinRowsPerSplit = 32;

// gz = op(g, s) over rows [blockIdx.y * rows_per_split, ...) of the column strip of this block,
// and the strip's column sums of gz over those rows (unrounded, in opmath) into
// partial[blockIdx.y]. With kVec > 1, n is a multiple of kVec and the pointers 16-byte aligned.
// (Without a bias to differentiate, common.cuh's launch_binary does the elementwise part alone.)
template <int kVec, typename scalar_t, typename Op>
__global__ void __launch_bounds__(kBwdColThreads* kBwdRowThreads)
    bias_act_bwd_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ s,
                        scalar_t* __restrict__ gz, at::opmath_type<scalar_t>* __restrict__ partial,
                        int64_t m, int64_t n, int64_t rows_per_split, Op op) {
  using T = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const int64_t col = (int64_t(blockIdx.x) * kBwdColThreads + threadIdx.x) * kVec;
  const int64_t row_begin = int64_t(blockIdx.y) * rows_per_split;
  const int64_t row_end = row_begin + rows_per_split < m ? row_begin + rows_per_split : m;
  T acc[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) acc[k] = T(0);

  if (col < n) {
    constexpr int64_t kStep = int64_t(kBwdRowThreads) * kBwdRowUnroll;
    for (int64_t r0 = row_begin + threadIdx.y; r0 < row_end; r0 += kStep) {
      P in_g[kBwdRowUnroll], in_s[kBwdRowUnroll];
#pragma unroll
      for (int u = 0; u < kBwdRowUnroll; ++u) {
        const int64_t r = r0 + int64_t(u) * kBwdRowThreads;
        if (r < row_end) {
          in_g[u] = *reinterpret_cast<const P*>(g + r * n + col);
          in_s[u] = *reinterpret_cast<const P*>(s + r * n + col);
        }
      }
#pragma unroll
      for (int u = 0; u < kBwdRowUnroll; ++u) {
        const int64_t r = r0 + int64_t(u) * kBwdRowThreads;
        if (r < row_end) {
          P out;
#pragma unroll
          for (int k = 0; k < kVec; ++k) {
            const T d = op(static_cast<T>(in_g[u].v[k]), static_cast<T>(in_s[u].v[k]));
            out.v[k] = static_cast<scalar_t>(d);
            acc[k] += d;
          }
          *reinterpret_cast<P*>(gz + r * n + col) = out;
        }
      }
    }
  }
  // The block's kBwdRowThreads partial sums of each column, added in a fixed order.
  __shared__ T sums[kBwdRowThreads][kBwdColThreads * kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) sums[threadIdx.y][threadIdx.x * kVec + k] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && col < n) {
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      T total = T(0);
#pragma unroll
      for (int y = 0; y < kBwdRowThreads; ++y) total += sums[y][threadIdx.x * kVec + k];
      partial[int64_t(blockIdx.y) * n + col + k] = total;
    }
  }
}

// gb[c] = sum over splits of partial[split][c], splits in order.
template <typename scalar_t>
__global__ void sum_partials_kernel(const at::opmath_type<scalar_t>* __restrict__ partial,
                                    scalar_t* __restrict__ gb, int64_t splits, int64_t n) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= n) return;
  at::opmath_type<scalar_t> total = 0;
  for (int64_t y = 0; y < splits; ++y) total += partial[y * n + col];
  gb[col] = static_cast<scalar_t>(total);
}

// --- launchers

// gz = g act'(s), and gb = sum_rows gz when want_bias; g and s contiguous (m, n).
std::tuple<at::Tensor, at::Tensor> bias_act_bwd_cuda(const at::Tensor& g, const at::Tensor& s,
                                                     Activation act, double p0, double p1,
                                                     bool want_bias, bool into_g) {
  const int64_t m = g.size(0), n = g.size(1);
  // In place: every element of g is loaded by the thread that stores its gz, before the store.
  at::Tensor gz = into_g ? g : at::empty({m, n}, g.options());
  if (!want_bias) {
    BACKPROP_EXT_DISPATCH_FLOATS(g.scalar_type(), "linear_bwd", [&] {
      using T = at::opmath_type<scalar_t>;
      visit_activation(act, [&](auto tag) {
        constexpr Activation A = decltype(tag)::value;
        launch_binary(g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                      gz.mutable_data_ptr<scalar_t>(), g.numel(),
                      ActivationBackward<A, T>{T(p0), T(p1)});
      });
    });
    return {gz, at::Tensor()};
  }
  if (m == 0 || n == 0) return {gz, at::zeros({n}, g.options())};

  at::Tensor gb = at::empty({n}, g.options());
  BACKPROP_EXT_DISPATCH_FLOATS(g.scalar_type(), "linear_bwd", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int kVec = kVecFor16Bytes<scalar_t>;
    const bool vectorized = n % kVec == 0 && is_aligned(g.const_data_ptr(), 16) &&
                            is_aligned(s.const_data_ptr(), 16) &&
                            is_aligned(gz.const_data_ptr(), 16);
    const int64_t strip = int64_t(kBwdColThreads) * (vectorized ? kVec : 1);
    const int64_t strips = (n + strip - 1) / strip;
    // Enough blocks to fill the device about twice (8 resident blocks of 256 threads per SM), rows
    // split evenly between them. The split depends on the shape and the device only, so the sums
    // are the same, bit for bit, run after run.
    const int64_t wanted = int64_t(sm_count()) * 16;
    int64_t splits = std::clamp<int64_t>((wanted + strips - 1) / strips, 1,
                                         (m + kMinRowsPerSplit - 1) / kMinRowsPerSplit);
    splits = std::min<int64_t>(splits, 65535);
    const int64_t rows_per_split = (m + splits - 1) / splits;
    splits = (m + rows_per_split - 1) / rows_per_split;
    at::Tensor partial =
        at::empty({splits, n}, g.options().dtype(at::toOpMathType(g.scalar_type())));

    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const dim3 grid(static_cast<unsigned>(strips), static_cast<unsigned>(splits));
    const dim3 block(kBwdColThreads, kBwdRowThreads);
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const ActivationBackward<A, T> op{T(p0), T(p1)};
      if (vectorized) {
        bias_act_bwd_kernel<kVec>
            <<<grid, block, 0, stream>>>(g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                                         gz.mutable_data_ptr<scalar_t>(),
                                         partial.mutable_data_ptr<T>(), m, n, rows_per_split, op);
      } else {
        bias_act_bwd_kernel<1>
            <<<grid, block, 0, stream>>>(g.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                                         gz.mutable_data_ptr<scalar_t>(),
                                         partial.mutable_data_ptr<T>(), m, n, rows_per_split, op);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    constexpr int kThreads = 256;
    sum_partials_kernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0,
                          stream>>>(partial.const_data_ptr<T>(), gb.mutable_data_ptr<scalar_t>(),
                                    splits, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gz, gb};
}

void activation_into(const at::Tensor& z, at::Tensor& y, Activation act, double p0, double p1) {
  BACKPROP_EXT_DISPATCH_FLOATS(z.scalar_type(), "linear_fwd", [&] {
    using T = at::opmath_type<scalar_t>;
    visit_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch_unary(z.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), z.numel(),
                   ActivationForward<A, T>{T(p0), T(p1)});
    });
  });
}

// --- cuBLASLt

cudaDataType_t cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return CUDA_R_64F;
    case at::kFloat: return CUDA_R_32F;
    case at::kHalf: return CUDA_R_16F;
    case at::kBFloat16: return CUDA_R_16BF;
    default: TORCH_CHECK(false, "linear: no cuBLASLt type for ", t);
  }
}

template <typename Handle, cublasStatus_t (*kDestroy)(Handle)>
struct LtObject {
  Handle raw = nullptr;
  LtObject() = default;
  LtObject(const LtObject&) = delete;
  LtObject& operator=(const LtObject&) = delete;
  ~LtObject() {
    if (raw != nullptr) kDestroy(raw);
  }
};
using LtMatmulDesc = LtObject<cublasLtMatmulDesc_t, &cublasLtMatmulDescDestroy>;
using LtLayout = LtObject<cublasLtMatrixLayout_t, &cublasLtMatrixLayoutDestroy>;
using LtPreference = LtObject<cublasLtMatmulPreference_t, &cublasLtMatmulPreferenceDestroy>;

template <typename V>
void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const V& value) {
  TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

template <typename V>
void set(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
         const V& value) {
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

uint32_t alignment_of(const void* p) {
  uint32_t alignment = 256;
  while (reinterpret_cast<uintptr_t>(p) % alignment != 0) alignment /= 2;
  return alignment;
}

// One cuBLASLt call: D (m x n, column-major, leading dim ldd) = op(A) op(B) with an epilogue.
struct LtGemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // *BIAS epilogues: the bias (length m); BGRADB: its gradient, out
  void* aux = nullptr;         // *_AUX epilogues: the pre-activation, out, leading dim ld_aux
  int64_t ld_aux = 0;
};

// Runs g in `dtype` under torch's precision flags (allow_tf32, the fp16/bf16 reduced-precision
// and split-K settings, fp16 accumulation), on torch's cuBLASLt handle, workspace and stream.
// Returns false, launching nothing, when cuBLASLt has no algorithm for it or a dimension is
// empty (the ATen route handles both).
bool run_lt_gemm(const LtGemm& g, at::ScalarType dtype) {
  if (g.m == 0 || g.n == 0 || g.k == 0) return false;
  auto& context = at::globalContext();
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  cudaDataType_t scale = CUDA_R_32F;
  const double one_d = 1, zero_d = 0;
  const float one_f = 1, zero_f = 0;
  const at::Half one_h = 1.0f, zero_h = 0.0f;
  const void* alpha = &one_f;
  const void* beta = &zero_f;
  std::optional<at::CuBLASReductionOption> reduction;
  if (dtype == at::kDouble) {
    compute = CUBLAS_COMPUTE_64F;
    scale = CUDA_R_64F;
    alpha = &one_d;
    beta = &zero_d;
  } else if (dtype == at::kFloat) {
    if (context.allowTF32CuBLAS()) compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  } else if (dtype == at::kHalf) {
    if (context.allowFP16AccumulationCuBLAS()) {
      compute = CUBLAS_COMPUTE_16F;
      scale = CUDA_R_16F;
      alpha = &one_h;
      beta = &zero_h;
    }
    reduction = context.allowFP16ReductionCuBLAS();
  } else {
    reduction = context.allowBF16ReductionCuBLAS();
  }

  const cudaDataType_t type = cuda_dtype(dtype);
  LtMatmulDesc desc;
  TORCH_CUDABLAS_CHECK(cublasLtMatmulDescCreate(&desc.raw, compute, scale));
  set(desc.raw, CUBLASLT_MATMUL_DESC_TRANSA, g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(desc.raw, CUBLASLT_MATMUL_DESC_TRANSB, g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N);
  set(desc.raw, CUBLASLT_MATMUL_DESC_EPILOGUE, g.epilogue);
  if (g.bias != nullptr) set(desc.raw, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux != nullptr) {
    set(desc.raw, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set(desc.raw, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.ld_aux);
  }
  LtLayout a, b, d;
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&a.raw, type, g.trans_a ? g.k : g.m,
                                                  g.trans_a ? g.m : g.k, g.lda));
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&b.raw, type, g.trans_b ? g.n : g.k,
                                                  g.trans_b ? g.k : g.n, g.ldb));
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&d.raw, type, g.m, g.n, g.ldd));

  const size_t workspace_size = at::cuda::getCUDABlasLtWorkspaceSize();
  LtPreference pref;
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.raw));
  set(pref.raw, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, static_cast<uint64_t>(workspace_size));
  set(pref.raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignment_of(g.a));
  set(pref.raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignment_of(g.b));
  set(pref.raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignment_of(g.d));
  set(pref.raw, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignment_of(g.d));
  using at::CuBLASReductionOption;
  if (reduction.has_value() &&
      *reduction != CuBLASReductionOption::AllowReducedPrecisionWithSplitK) {
    // Reduced-precision reductions are those in the output type (in place or staged); split-K
    // stays allowed with an fp32 reduction unless split-K itself is off.
    const uint32_t mask = *reduction == CuBLASReductionOption::DisallowReducedPrecisionAllowSplitK
                              ? uint32_t(CUBLASLT_REDUCTION_SCHEME_NONE) |
                                    uint32_t(CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)
                              : uint32_t(CUBLASLT_REDUCTION_SCHEME_NONE);
    set(pref.raw, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, mask);
  }

  const cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle, desc.raw, a.raw, b.raw, d.raw, d.raw, pref.raw, 1, &heuristic, &found);
  // An epilogue, type or alignment cuBLASLt does not support shows here, as an error status or as
  // no algorithm found: either way the caller takes the ATen route.
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) return false;
  TORCH_CUDABLAS_CHECK(cublasLtMatmul(handle, desc.raw, alpha, g.a, a.raw, g.b, b.raw, beta, g.d,
                                      d.raw, g.d, d.raw, &heuristic.algo,
                                      at::cuda::getCUDABlasLtWorkspace(), workspace_size,
                                      c10::cuda::getCurrentCUDAStream()));
  return true;
}

// d = op(a) op(b) for row-major contiguous a, b and d (op: a transpose where asked).
// cuBLASLt is column-major and sees each row-major buffer as its transpose, so it computes
// d^T = op(b)^T op(a)^T: the operands swap places, and an operand is transposed there when it is
// not here.
LtGemm row_major_gemm(const at::Tensor& a, bool trans_a, const at::Tensor& b, bool trans_b,
                      at::Tensor& d) {
  LtGemm g;
  g.m = d.size(1);
  g.n = d.size(0);
  g.k = trans_a ? a.size(0) : a.size(1);
  g.trans_a = trans_b;
  g.a = b.const_data_ptr();
  g.lda = b.size(1);
  g.trans_b = trans_a;
  g.b = a.const_data_ptr();
  g.ldb = a.size(1);
  g.d = d.mutable_data_ptr();
  g.ldd = d.size(1);
  return g;
}

// out (M, N) = x (M, K) W^T (+ b), with the given epilogue; the bias runs along the column-major
// D's N rows, as the BIAS epilogues want it, and aux (M, N) like out.
bool forward_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, at::Tensor& out,
                  cublasLtEpilogue_t epilogue, at::Tensor* aux) {
  LtGemm g = row_major_gemm(x, /*trans_a=*/false, w, /*trans_b=*/true, out);
  g.epilogue = epilogue;
  if (bias.defined()) g.bias = bias.const_data_ptr();
  if (aux != nullptr) {
    g.aux = aux->mutable_data_ptr();
    g.ld_aux = out.size(1);
  }
  return run_lt_gemm(g, x.scalar_type());
}

// gW (N, K) = gz^T x for gz (M, N), x (M, K), and with it gb = sum_rows gz from the BGRADB
// epilogue: the GEMM's reduction runs over M, and gb along the column-major D's N columns.
bool weight_grad_gemm(const at::Tensor& gz, const at::Tensor& x, at::Tensor& gw, at::Tensor& gb) {
  LtGemm g = row_major_gemm(gz, /*trans_a=*/true, x, /*trans_b=*/false, gw);
  g.epilogue = CUBLASLT_EPILOGUE_BGRADB;
  g.bias = gb.mutable_data_ptr();
  return run_lt_gemm(g, x.scalar_type());
}

// BACKPROP_EXT_LINEAR_EPILOGUE: "ours" (default) or "cublaslt"; read once.
bool lt_activation_epilogues() {
  static const bool enabled = [] {
    const char* value = std::getenv("BACKPROP_EXT_LINEAR_EPILOGUE");
    const std::string_view v = value == nullptr ? "ours" : value;
    TORCH_CHECK(v == "ours" || v == "cublaslt",
                "backprop_ext: BACKPROP_EXT_LINEAR_EPILOGUE must be 'ours' or 'cublaslt', got '", v,
                "'");
    return v == "cublaslt";
  }();
  return enabled;
}

// The cuBLASLt epilogue computing act(x W^T + b), if it has one for act; aux: with the
// pre-activation kept as its aux output.
std::optional<cublasLtEpilogue_t> lt_activation_epilogue(Activation act, bool bias, bool aux) {
  if (act == Activation::kRelu && !aux) {
    return bias ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
  }
  if (act == Activation::kGeluTanh) {
    if (aux) return bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    return bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  }
  return std::nullopt;
}

// --- kernels of the stubs (linear.h)

void linear_fwd_cuda(const at::Tensor& input2d, const at::Tensor& weight, const at::Tensor& bias,
                     std::optional<Activation> act, double p0, double p1, at::Tensor& z,
                     at::Tensor& y) {
  const at::Tensor x = input2d.contiguous(), w = weight.contiguous();
  const int64_t n = w.size(0);
  const bool keep = !y.is_same(z);
  if (act.has_value() && lt_activation_epilogues()) {
    // GELU_AUX wants the aux leading dimension a multiple of 8.
    const auto epilogue = lt_activation_epilogue(*act, bias.defined(), keep);
    if (epilogue.has_value() && (!keep || n % 8 == 0) &&
        forward_gemm(x, w, bias, y, *epilogue, keep ? &z : nullptr)) {
      return;
    }
  }
  const bool done =
      bias.defined() ? forward_gemm(x, w, bias, z, CUBLASLT_EPILOGUE_BIAS, nullptr) : false;
  if (!done) {
    if (bias.defined()) {
      at::addmm_out(z, bias, x, w.t());
    } else {
      at::mm_out(z, x, w.t());
    }
  }
  if (act.has_value()) activation_into(z, y, *act, p0, p1);
}

// gW = gz^T x, with gb = sum_rows gz from the same GEMM's BGRADB epilogue when asked.
std::tuple<at::Tensor, at::Tensor> weight_grad_cuda(const at::Tensor& gz_in, const at::Tensor& x_in,
                                                    bool want_bias) {
  const at::Tensor gz = gz_in.contiguous(), x = x_in.contiguous();
  at::Tensor gw = at::empty({gz.size(1), x.size(1)}, x.options());
  if (want_bias) {
    at::Tensor gb = at::empty({gz.size(1)}, x.options());
    if (weight_grad_gemm(gz, x, gw, gb)) return {gw, gb};
  }
  at::mm_out(gw, gz.t(), x);
  return {gw, at::Tensor()};
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(linear_fwd_stub, CUDA, &linear_fwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(bias_act_bwd_stub, CUDA, &bias_act_bwd_cuda);
BACKPROP_EXT_REGISTER_KERNEL(weight_grad_stub, CUDA, &weight_grad_cuda);

}  // namespace backprop_ext::cuda
