// Linear ops on CPU. The matrix products go through ATen's BLAS (at::mm / at::addmm, the calls
// torch's own linear makes); the passes BLAS cannot fuse are linear_kernels.cpp's, one per ISA.
//
//   linear_fwd   no activation:  out = addmm(b, x, W^T)                    (torch's F.linear)
//                activation:     z = mm(x, W^T), then one pass: z += b, y = act(z)
//                                (float16/bfloat16: z = addmm(b, x, W^T), then y = act(z))
//   linear_bwd   activation:     one pass: gz = gy act'(s), gb = sum_rows gz; then
//                                gx = gz W, gW = gz^T x
//                no activation:  gz = gy, gb = gy.sum(0)
//
// x is the input flattened to (M, K), W the (N, K) weight, s the tensor forward saved (the
// pre-activation z, or the output y for relu, sigmoid and tanh).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "../linear_args.h"
#include "linear_kernels.h"

namespace backprop_ext::cpu {
namespace {

// Elementwise work per thread below which splitting costs more than it saves (ATen's value).
constexpr int64_t kGrainSize = 32768;
// Elements per task of the backward pass. Its tiles depend on the shape only, never on the
// thread count, so the bias gradient is summed in the same order (to the same bits) however
// many threads run it.
constexpr int64_t kBwdTaskElems = 65536;

int64_t leading_size(const at::Tensor& t) {
  return c10::multiply_integers(t.sizes().begin(), t.sizes().end() - 1);
}

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
  at::parallel_for(0, m, std::max<int64_t>(1, kGrainSize / n), [&](int64_t begin, int64_t end) {
    kernel(dtype, zp + begin * row_bytes, yp + begin * row_bytes, bp, end - begin, n, act, p0, p1);
  });
}

// gz = g act'(s) for contiguous (M, N) g and s, and (when want_bias) gb = sum_rows gz: tiles of
// at most kLinearMaxTileCols columns, each writing its column sums into one row of `partial`,
// which is then summed in a fixed order.
std::tuple<at::Tensor, at::Tensor> bias_act_bwd(const at::Tensor& g, const at::Tensor& s,
                                                Activation act, double p0, double p1,
                                                bool want_bias) {
  const int64_t m = g.size(0), n = g.size(1);
  at::Tensor gz = at::empty({m, n}, g.options());
  const auto opmath = at::toOpMathType(g.scalar_type());
  if (m == 0 || n == 0) {
    return {gz, want_bias ? at::zeros({n}, g.options()) : at::Tensor()};
  }
  const int64_t tile_cols = std::min(n, kLinearMaxTileCols);
  const int64_t col_tiles = (n + tile_cols - 1) / tile_cols;
  // At least 64 rows a tile keeps `partial` under 1/64 of the gradient's size.
  const int64_t tile_rows = std::max<int64_t>(64, kBwdTaskElems / tile_cols);
  const int64_t row_tiles = (m + tile_rows - 1) / tile_rows;
  at::Tensor partial = want_bias ? at::empty({row_tiles, n}, g.options().dtype(opmath))
                                 : at::Tensor();

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

// --- ops

std::tuple<at::Tensor, at::Tensor> linear_fwd(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias,
                                              c10::string_view activation, double p0, double p1,
                                              bool save_preact) {
  check_linear_args("linear_fwd", input, weight, bias);
  const auto act = parse_linear_activation(activation);
  const bool has_bias = bias.has_value() && bias->defined();
  const int64_t n = weight.size(0), k = weight.size(1), m = leading_size(input);
  const at::Tensor x = input.reshape({m, k});
  const auto out_sizes = linear_output_sizes(input, weight);
  const at::Tensor none = at::empty({0}, input.options());

  if (!act.has_value()) {
    at::Tensor out = at::empty(out_sizes, input.options());
    at::Tensor out2d = out.view({m, n});
    if (has_bias) {
      at::addmm_out(out2d, *bias, x, weight.t());
    } else {
      at::mm_out(out2d, x, weight.t());
    }
    return {out, none};
  }
  at::Tensor z = at::empty(out_sizes, input.options());
  at::Tensor z2d = z.view({m, n});
  // float16/bfloat16: the bias goes into the GEMM so that z is rounded once, as torch's linear
  // rounds it (rounding x W^T before adding b would lose z's low bits wherever b cancels x W^T).
  // float32/float64 lose nothing measurable either way, and add b in the pass after a plain mm.
  const bool bias_in_gemm = has_bias && at::isReducedFloatingType(input.scalar_type());
  if (bias_in_gemm) {
    at::addmm_out(z2d, *bias, x, weight.t());
  } else {
    at::mm_out(z2d, x, weight.t());
  }
  // Without a pre-activation to keep, the activation overwrites the GEMM output in place.
  const bool keep = save_preact && needs_preact(act);
  at::Tensor y = keep ? at::empty(out_sizes, input.options()) : z;
  bias_act_fwd(z, y, has_bias && !bias_in_gemm ? bias->contiguous() : at::Tensor(), *act, p0, p1);
  return {y, keep ? z : none};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_bwd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& saved, c10::string_view activation, double p0, double p1,
    std::array<bool, 3> output_mask) {
  const auto act = parse_linear_activation(activation);
  check_linear_bwd_args("linear_bwd", grad_output, input, weight, saved, act);
  const int64_t n = weight.size(0), k = weight.size(1), m = leading_size(input);
  // Gradients not asked for come back as empty tensors, each its own (outputs never alias).
  const auto none = [&] { return at::empty({0}, input.options()); };
  const at::Tensor g = grad_output.reshape({m, n});

  at::Tensor grad_preact, grad_bias;
  if (act.has_value()) {
    std::tie(grad_preact, grad_bias) = bias_act_bwd(
        g.contiguous(), saved.reshape({m, n}).contiguous(), *act, p0, p1, output_mask[2]);
  } else {
    grad_preact = g;
    if (output_mask[2]) grad_bias = g.sum(0);
  }
  at::Tensor grad_input = none(), grad_weight = none();
  if (output_mask[0]) grad_input = at::mm(grad_preact, weight).view(input.sizes());
  if (output_mask[1]) grad_weight = at::mm(grad_preact.t(), input.reshape({m, k}));
  return {grad_input, grad_weight, output_mask[2] ? grad_bias : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {
  m.impl("linear_fwd", &linear_fwd);
  m.impl("linear_bwd", &linear_bwd);
}

}  // namespace backprop_ext::cpu
