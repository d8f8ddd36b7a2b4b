// Multi-tensor ops on CPU (gradient clipping): argument checks, the chunk plan over all tensors,
// and the thread split. The vectorized loops over one chunk are in multi_tensor_kernels.cpp.
//
// Every tensor is cut into chunks of kMultiTensorChunk elements; the chunks of all tensors form one
// work list that at::parallel_for splits across threads, so a few large tensors and many small ones
// keep every thread equally busy. Norm partials are kept per chunk and combined in chunk order, so
// the result does not depend on the number of threads.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../multi_tensor.h"
#include "../multi_tensor_math.h"
#include "multi_tensor_kernels.h"

namespace backprop_ext::cpu {
namespace {

// Elementwise work per thread below which splitting costs more than it saves (ATen's value).
constexpr int64_t kGrainSize = 32768;

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

  explicit ChunkPlan(const std::vector<FlatView>& views) {
    first_chunk.reserve(views.size() + 1);
    for (size_t i = 0; i < views.size(); ++i) {
      first_chunk.push_back(static_cast<int64_t>(chunks.size()));
      const int64_t n = views[i].flat.numel();
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

std::vector<FlatView> flat_views(at::TensorList tensors) {
  std::vector<FlatView> views;
  views.reserve(tensors.size());
  for (const at::Tensor& t : tensors) views.push_back(flat_view(t));
  return views;
}

// --- norm

// One partial per chunk (see multi_tensor_math.h).
std::vector<NormPartial> norm_partials(const std::vector<FlatView>& views, const ChunkPlan& plan,
                                       NormKind kind, double p) {
  std::vector<NormPartial> partials(plan.chunks.size());
  const auto kernel = pick_multi_tensor_norm_kernel();
  plan.parallel_for_each([&](int64_t c, const ChunkRef& chunk) {
    const at::Tensor& t = views[chunk.tensor].flat;
    const char* base = static_cast<const char*>(t.const_data_ptr());
    partials[c] = kernel(t.scalar_type(), base + chunk.begin * t.element_size(), chunk.size, kind,
                         p);
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

at::Tensor multi_tensor_norm(at::TensorList tensors, double p) {
  check_tensor_list("multi_tensor_norm", tensors);
  const NormKind kind = parse_norm_kind("multi_tensor_norm", p);
  const auto views = flat_views(tensors);
  const ChunkPlan plan(views);
  const auto partials = norm_partials(views, plan, kind, p);
  const double norm = finalize_range(partials, 0, static_cast<int64_t>(partials.size()), kind, p);
  if (norm_result_dtype(tensors) == at::kDouble) return at::scalar_tensor(norm, at::kDouble);
  // A float64 norm beyond float32's range rounds to inf, as Tensor.to(float32) rounds it
  // (at::scalar_tensor would refuse the double).
  return at::scalar_tensor(static_cast<float>(norm), at::kFloat);
}

at::Tensor multi_tensor_norm_per_tensor(at::TensorList tensors, double p) {
  check_tensor_list("multi_tensor_norm_per_tensor", tensors);
  const NormKind kind = parse_norm_kind("multi_tensor_norm_per_tensor", p);
  const auto views = flat_views(tensors);
  const ChunkPlan plan(views);
  const auto partials = norm_partials(views, plan, kind, p);
  const auto n = static_cast<int64_t>(tensors.size());
  at::Tensor out = at::empty({n}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.mutable_data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    o[i] = finalize_range(partials, plan.first_chunk[i], plan.first_chunk[i + 1], kind, p);
  }
  return norm_result_dtype(tensors) == at::kDouble ? out : out.to(at::kFloat);
}

// --- in-place updates

// Runs kernel(dtype, chunk pointer, chunk size) over every chunk, then copies the results of
// non-dense tensors (computed on contiguous copies) back.
template <typename Kernel>
void update_inplace(at::TensorList tensors, const Kernel& kernel) {
  const auto views = flat_views(tensors);
  const ChunkPlan plan(views);
  plan.parallel_for_each([&](int64_t, const ChunkRef& chunk) {
    const at::Tensor& t = views[chunk.tensor].flat;
    char* base = static_cast<char*>(t.mutable_data_ptr());
    kernel(t.scalar_type(), base + chunk.begin * t.element_size(), chunk.size);
  });
  for (size_t i = 0; i < views.size(); ++i) {
    if (views[i].is_copy) tensors[i].copy_(views[i].flat);
  }
}

void multi_tensor_scale_(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  check_scale_args(tensors, total_norm, max_norm);
  // The coefficient in the norm's precision, as torch computes it: double for a float64 norm,
  // float otherwise. Reading a CPU scalar is not a device sync.
  const double norm = total_norm.item<double>();
  const double coef = total_norm.scalar_type() == at::kDouble
      ? clip_coefficient<double>(norm, max_norm)
      : static_cast<double>(clip_coefficient<float>(static_cast<float>(norm),
                                                    static_cast<float>(max_norm)));
  const auto kernel = pick_multi_tensor_scale_kernel();
  update_inplace(tensors, [&](c10::ScalarType dtype, void* x, int64_t n) {
    kernel(dtype, x, n, coef);
  });
}

void multi_tensor_clamp_(at::TensorList tensors, double lo, double hi) {
  check_tensor_list("multi_tensor_clamp_", tensors);
  check_writable("multi_tensor_clamp_", tensors);
  TORCH_CHECK(lo <= hi, "multi_tensor_clamp_: expected lo <= hi (and neither NaN), but got lo = ",
              lo, " and hi = ", hi);
  const auto kernel = pick_multi_tensor_clamp_kernel();
  update_inplace(tensors, [&](c10::ScalarType dtype, void* x, int64_t n) {
    kernel(dtype, x, n, lo, hi);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm);
  m.impl("multi_tensor_norm_per_tensor", &multi_tensor_norm_per_tensor);
  m.impl("multi_tensor_scale_", &multi_tensor_scale_);
  m.impl("multi_tensor_clamp_", &multi_tensor_clamp_);
}

}  // namespace backprop_ext::cpu
