// The multi-tensor family's CPU kernels (gradient clipping): the chunk plan over all tensors and
// the thread split; the ops around them are csrc/ops/multi_tensor.cpp's. The vectorized loops over
// one chunk are in multi_tensor_kernels.cpp.
//
// Every tensor is cut into chunks of kMultiTensorChunk elements; the chunks of all tensors form one
// work list that at::parallel_for splits across threads, so a few large tensors and many small ones
// keep every thread equally busy. Norm partials are kept per chunk and combined in chunk order, so
// the result does not depend on the number of threads.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/multi_tensor_kernels.h"
#include "cpu/parallel.h"
#include "ops/multi_tensor.h"

namespace backprop_ext::cpu {
namespace {

struct ChunkRef {
  int64_t tensor;
  int64_t begin;  // first element
  int64_t size;   // elements
};

// The chunks of every tensor, in order; first_chunk[i] is tensor i's first entry (size n + 1).
struct ChunkPlan {
  std::vector<ChunkRef> chunks;
  std::vector<int64_t> first_chunk;
  int64_t numel = 0;

  explicit ChunkPlan(const std::vector<at::Tensor>& tensors) {
    first_chunk.reserve(tensors.size() + 1);
    for (size_t i = 0; i < tensors.size(); ++i) {
      first_chunk.push_back(static_cast<int64_t>(chunks.size()));
      const int64_t n = tensors[i].numel();
      numel += n;
      for (int64_t b = 0; b < n; b += kMultiTensorChunk) {
        chunks.push_back({static_cast<int64_t>(i), b, std::min(kMultiTensorChunk, n - b)});
      }
    }
    first_chunk.push_back(static_cast<int64_t>(chunks.size()));
  }

  // Runs f(chunk) over every chunk, split across threads with about kGrainSize elements a task.
  template <typename F>
  void parallel_for_each(const F& f) const {
    const int64_t n = static_cast<int64_t>(chunks.size());
    if (n == 0) return;
    const int64_t grain = std::max<int64_t>(1, n * kGrainSize / std::max<int64_t>(numel, 1));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) f(c, chunks[c]);
    });
  }
};

// --- norm

// One partial per chunk (see multi_tensor_math.h).
std::vector<NormPartial> norm_partials(const std::vector<at::Tensor>& tensors,
                                       const ChunkPlan& plan, NormKind kind, double p) {
  std::vector<NormPartial> partials(plan.chunks.size());
  const auto kernel = pick_multi_tensor_norm_kernel();
  plan.parallel_for_each([&](int64_t c, const ChunkRef& chunk) {
    const at::Tensor& t = tensors[chunk.tensor];
    const char* base = static_cast<const char*>(t.const_data_ptr());
    partials[c] =
        kernel(t.scalar_type(), base + chunk.begin * t.element_size(), chunk.size, kind, p);
  });
  return partials;
}

// The norm of chunks [begin, end): their largest scale, their sums weighted against it in
// chunk order, then the root.
double finalize_range(const std::vector<NormPartial>& partials, int64_t begin, int64_t end,
                      NormKind kind, double p) {
  return visit_norm_kind(kind, [&](auto tag) {
    constexpr NormKind K = decltype(tag)::value;
    const NormOp<K, double> op{p};
    double m = 0;
    for (int64_t c = begin; c < end; ++c) m = op.max_scale(m, partials[c].scale);
    double s = 0;
    if constexpr (K != NormKind::kLinf) {
      for (int64_t c = begin; c < end; ++c) s += partials[c].sum * op.weight(partials[c].scale, m);
    }
    return op.finalize(m, s);
  });
}

void multi_tensor_norm_cpu(const std::vector<at::Tensor>& tensors, NormKind kind, double p,
                           at::Tensor& out) {
  const ChunkPlan plan(tensors);
  const auto partials = norm_partials(tensors, plan, kind, p);
  const auto norm_of = [&](int64_t begin, int64_t end) {
    return finalize_range(partials, begin, end, kind, p);
  };
  // A float64 norm beyond float32's range rounds to inf, as Tensor.to(float32) rounds it.
  const auto write = [&](int64_t i, double norm) {
    if (out.scalar_type() == at::kDouble) {
      out.mutable_data_ptr<double>()[i] = norm;
    } else {
      out.mutable_data_ptr<float>()[i] = static_cast<float>(norm);
    }
  };
  if (out.dim() == 0) {
    write(0, norm_of(0, static_cast<int64_t>(partials.size())));
    return;
  }
  for (int64_t i = 0; i < out.numel(); ++i) {
    write(i, norm_of(plan.first_chunk[i], plan.first_chunk[i + 1]));
  }
}

// --- in-place updates

// Runs kernel(dtype, chunk pointer, chunk size) over every chunk.
template <typename Kernel>
void update_inplace(const std::vector<at::Tensor>& tensors, const Kernel& kernel) {
  const ChunkPlan plan(tensors);
  plan.parallel_for_each([&](int64_t, const ChunkRef& chunk) {
    const at::Tensor& t = tensors[chunk.tensor];
    char* base = static_cast<char*>(t.mutable_data_ptr());
    kernel(t.scalar_type(), base + chunk.begin * t.element_size(), chunk.size);
  });
}

void multi_tensor_scale_cpu(const std::vector<at::Tensor>& tensors, const at::Tensor& total_norm,
                            double max_norm) {
  // The coefficient in the norm's precision, as torch computes it: double for a float64 norm,
  // float otherwise. Reading a CPU scalar is not a device sync.
  const double norm = total_norm.item<double>();
  const double coef = total_norm.scalar_type() == at::kDouble
                          ? clip_coefficient<double>(norm, max_norm)
                          : static_cast<double>(clip_coefficient<float>(
                                static_cast<float>(norm), static_cast<float>(max_norm)));
  // A norm within max_norm clamps the coefficient to exactly 1, and x * 1 is x (NaN stays NaN):
  // a step that does not clip leaves the gradients untouched instead of rewriting them.
  if (coef == 1.0) return;
  const auto kernel = pick_multi_tensor_scale_kernel();
  update_inplace(tensors,
                 [&](c10::ScalarType dtype, void* x, int64_t n) { kernel(dtype, x, n, coef); });
}

void multi_tensor_clamp_cpu(const std::vector<at::Tensor>& tensors, double lo, double hi) {
  const auto kernel = pick_multi_tensor_clamp_kernel();
  update_inplace(tensors,
                 [&](c10::ScalarType dtype, void* x, int64_t n) { kernel(dtype, x, n, lo, hi); });
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_norm_stub, CPU, &multi_tensor_norm_cpu);
BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_scale_stub, CPU, &multi_tensor_scale_cpu);
BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_clamp_stub, CPU, &multi_tensor_clamp_cpu);

}  // namespace backprop_ext::cpu
