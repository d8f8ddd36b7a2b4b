// The linear family's CPU kernels; the ops around them are csrc/ops/linear.cpp's. The matrix
// products go through ATen's BLAS (at::mm / at::addmm, the calls torch's own linear makes); the
// passes BLAS cannot fuse are linear_kernels.cpp's, one per ISA.
//
//   linear_fwd   no activation:  out = addmm(b, x, W^T)                    (torch's F.linear)
//                activation:     z = mm(x, W^T), then one pass: z += b, y = act(z)
//                                (float16/bfloat16: z = addmm(b, x, W^T), then y = act(z))
//   linear_bwd   activation:     one pass: gz = gy act'(s), gb = sum_rows gz; then
//                                gx = gz W, gW = gz^T x
//                no activation:  gz = gy, gb = gy.sum(0)
//
// x is the input flattened to (M, K), W the (N, K) weight, s the tensor forward saved (the
// pre-activation z, or the output y for relu, relu6, sigmoid and tanh).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <tuple>

#include "cpu/linear_kernels.h"
#include "cpu/parallel.h"
#include "ops/linear.h"

namespace backprop_ext::cpu {
namespace {

// Elements per task of the backward pass. Its tiles depend on the shape only, never on the
// thread count, so the bias gradient is summed in the same order (to the same bits) however
// many threads run it.
constexpr int64_t kBwdTaskElems = 65536;

// y = act(z + b) over the (M, N) GEMM output, rows split across threads. y may be z itself.
void bias_act_fwd(at::Tensor& z, at::Tensor& y, const at::Tensor& bias, Activation act, double p0,
                  double p1) {
  const int64_t n = z.size(-1);
  const int64_t m = n == 0 ? 0 : z.numel() / n;
  if (m == 0 || n == 0) return;
  const auto kernel = pick_bias_act_fwd_kernel();
  const auto dtype = z.scalar_type();
  const int64_t row_bytes = n * z.element_size();
  char* zp = static_cast<char*>(z.mutable_data_ptr());
  char* yp = static_cast<char*>(y.mutable_data_ptr());
  const void* bp = bias.defined() ? bias.const_data_ptr() : nullptr;
  parallel_slices(m, n, [&](int64_t begin, int64_t end) {
    kernel(dtype, zp + begin * row_bytes, yp + begin * row_bytes, bp, end - begin, n, act, p0, p1);
  });
}

// gz = g act'(s) for contiguous (M, N) g and s, and (when want_bias) gb = sum_rows gz: tiles of
// at most kLinearMaxTileCols columns, each writing its column sums into one row of `partial`,
// which is then summed in a fixed order.
std::tuple<at::Tensor, at::Tensor> bias_act_bwd_cpu(const at::Tensor& g, const at::Tensor& s,
                                                    Activation act, double p0, double p1,
                                                    bool want_bias, bool into_g) {
  const int64_t m = g.size(0), n = g.size(1);
  at::Tensor gz = into_g ? g : at::empty({m, n}, g.options());
  const auto opmath = at::toOpMathType(g.scalar_type());
  if (m == 0 || n == 0) {
    return {gz, want_bias ? at::zeros({n}, g.options()) : at::Tensor()};
  }
  const int64_t tile_cols = std::min(n, kLinearMaxTileCols);
  const int64_t col_tiles = (n + tile_cols - 1) / tile_cols;
  // At least 64 rows a tile keeps `partial` under 1/64 of the gradient's size.
  const int64_t tile_rows = std::max<int64_t>(64, kBwdTaskElems / tile_cols);
  const int64_t row_tiles = (m + tile_rows - 1) / tile_rows;
  at::Tensor partial =
      want_bias ? at::empty({row_tiles, n}, g.options().dtype(opmath)) : at::Tensor();

  const auto kernel = pick_bias_act_bwd_kernel();
  const auto dtype = g.scalar_type();
  const int64_t size = g.element_size();
  const int64_t opsize = c10::elementSize(opmath);
  const char* gp = static_cast<const char*>(g.const_data_ptr());
  const char* sp = static_cast<const char*>(s.const_data_ptr());
  char* gzp = static_cast<char*>(gz.mutable_data_ptr());
  char* pp = want_bias ? static_cast<char*>(partial.mutable_data_ptr()) : nullptr;
  at::parallel_for(0, row_tiles * col_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r0 = (t / col_tiles) * tile_rows;
      const int64_t c0 = (t % col_tiles) * tile_cols;
      const int64_t offset = (r0 * n + c0) * size;
      void* part = pp == nullptr ? nullptr : pp + ((t / col_tiles) * n + c0) * opsize;
      kernel(dtype, gp + offset, sp + offset, gzp + offset, part, std::min(tile_rows, m - r0),
             std::min(tile_cols, n - c0), n, act, p0, p1);
    }
  });
  return {gz, want_bias ? partial.sum(0).to(g.scalar_type()) : at::Tensor()};
}

// --- kernels of the stubs (linear.h)

void linear_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                    std::optional<Activation> act, double p0, double p1, at::Tensor& z,
                    at::Tensor& y) {
  // float16/bfloat16: the bias goes into the GEMM so that z is rounded once, as torch's linear
  // rounds it (rounding x W^T before adding b would lose z's low bits wherever b cancels x W^T).
  // float32/float64 lose nothing measurable either way, and add b in the pass after a plain mm.
  const bool bias_in_gemm =
      bias.defined() && (!act.has_value() || at::isReducedFloatingType(x.scalar_type()));
  if (bias_in_gemm) {
    at::addmm_out(z, bias, x, weight.t());
  } else {
    at::mm_out(z, x, weight.t());
  }
  if (act.has_value()) bias_act_fwd(z, y, bias_in_gemm ? at::Tensor() : bias, *act, p0, p1);
}

std::tuple<at::Tensor, at::Tensor> weight_grad_cpu(const at::Tensor& gz, const at::Tensor& x,
                                                   bool /*want_bias: summed by the op*/) {
  return {at::mm(gz.t(), x), at::Tensor()};
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(linear_fwd_stub, CPU, &linear_fwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(bias_act_bwd_stub, CPU, &bias_act_bwd_cpu);
BACKPROP_EXT_REGISTER_KERNEL(weight_grad_stub, CPU, &weight_grad_cpu);

}  // namespace backprop_ext::cpu
