// The multi-tensor family's CUDA kernels (gradient clipping), on multi_tensor_apply.cuh; the ops
// around them are csrc/ops/multi_tensor.cpp's:
//   norm:  one partial per chunk into a float64 workspace: sum |x|^p (or max |x|) and max |x| in
//          opmath, block-reduced; a second launch sums again, rescaled by their max, the chunks
//          whose sum left the safe range (multi_tensor_math.h: "Norms without overflow"), and
//          returns at once for every other chunk. A finalize kernel combines the partials and
//          takes the p-th root.
//   scale: x *= min(1, max_norm / (norm + 1e-6)), each block reading the norm from device memory
//          (and leaving its chunk alone when that is 1).
//   clamp: x = clamp(x, lo, hi).
// Tensors are grouped by dtype (one kernel instantiation per dtype), each group packed into as
// few launches as the argument space allows. Nothing waits for the device: all work, including
// copies of non-dense tensors, is queued on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "cuda/common.cuh"
#include "cuda/multi_tensor_apply.cuh"
#include "ops/multi_tensor.h"

namespace backprop_ext::cuda {
namespace {

constexpr int kFinalizeThreads = 256;

// --- jobs (see multi_tensor_apply.cuh)

// The plain pass over a chunk writes its partial, or, where neither its sum of |x|^p nor its max
// |x| settles it (multi_tensor_math.h), marks it pending with the divisor for NormRescaleJob: a
// negative scale. The rescaled pass runs as its own launch rather than inside this loop: inlined
// here it raises the register count of every chunk's kernel (float16 32 -> 54 registers, float64
// 32 -> 48, with the IEEE division), lowering occupancy for a case ordinary data never reaches.
// The running max costs float32 and float16 no register (32, as without it), bfloat16 one (62 ->
// 63: the same occupancy) and float64 four (32 -> 36).
__device__ inline NormPartial pending_partial(double divisor) {
  return {-divisor, 0.0};
}
__device__ inline bool is_pending(const NormPartial& partial) {
  return partial.scale < 0;
}

template <typename scalar_t, NormKind K>
struct NormPartialJob {
  using T = at::opmath_type<scalar_t>;
  NormPartial* partials;  // one per chunk of the whole call
  T p;

  __device__ void operator()(void* data, int64_t begin, int64_t n, int64_t chunk) const {
    using Op = NormOp<K, T>;
    const Op op{p};
    T acc = T(0), max_abs = T(0);
    chunk_read(static_cast<const scalar_t*>(data) + begin, n, [&](T v) {
      acc = op.combine(acc, op.map(v));
      // p = inf accumulates the max itself. max_of may drop a NaN, which acc keeps.
      if constexpr (K != NormKind::kLinf) max_abs = math::max_of(max_abs, v < T(0) ? -v : v);
    });
    acc = block_reduce(acc, [](T a, T b) { return Op::combine(a, b); });
    if constexpr (K == NormKind::kLinf) {
      max_abs = acc;
    } else {
      max_abs = block_reduce(max_abs, [](T a, T b) { return math::max_of(a, b); });
    }
    if (threadIdx.x == 0) {
      NormPartial out;
      if (!Op::partial_from_sum(acc, out) && !Op::partial_from_max(max_abs, out)) {
        out = pending_partial(max_abs);
      }
      partials[chunk] = out;
    }
  }
};

// The second pass of the chunks NormPartialJob left pending: sum of |x / max|^p. It is launched
// after each NormPartialJob launch (p != inf), on the same tensors; there every settled chunk
// costs one read of its partial (one load per block, broadcast to its threads).
template <typename scalar_t, NormKind K>
struct NormRescaleJob {
  using T = at::opmath_type<scalar_t>;
  NormPartial* partials;
  T p;

  __device__ void operator()(void* data, int64_t begin, int64_t n, int64_t chunk) const {
    const NormPartial pending = partials[chunk];
    if (!is_pending(pending)) return;  // the same for every thread of the block
    const NormOp<K, T> op{p};
    const T divisor = static_cast<T>(-pending.scale);  // max |x|, exact in T
    T sum = T(0);
    chunk_read(static_cast<const scalar_t*>(data) + begin, n,
               [&](T v) { sum += op.map(v / divisor); });
    sum = block_reduce(sum, [](T a, T b) { return a + b; });
    // Written after every thread has read the pending partial: block_reduce synchronizes.
    if (threadIdx.x == 0) partials[chunk] = NormOp<K, T>::rescaled_partial(-pending.scale, sum);
  }
};

// norm_t: float for a float32 (or narrower) norm, double for a float64 one, as in torch.
template <typename scalar_t, typename norm_t>
struct ScaleJob {
  const norm_t* norm;
  norm_t max_norm;

  __device__ void operator()(void* data, int64_t begin, int64_t n, int64_t) const {
    using T = at::opmath_type<scalar_t>;
    const T coef = static_cast<T>(clip_coefficient<norm_t>(*norm, max_norm));
    // A norm within max_norm clamps the coefficient to exactly 1, and x * 1 is x: every block
    // leaves its chunk untouched, so a step that does not clip reads and writes no gradient.
    if (coef == T(1)) return;
    chunk_update(static_cast<scalar_t*>(data) + begin, n, [coef](T v) { return v * coef; });
  }
};

template <typename scalar_t>
struct ClampJob {
  using T = at::opmath_type<scalar_t>;
  T lo, hi;

  __device__ void operator()(void* data, int64_t begin, int64_t n, int64_t) const {
    const T l = lo, h = hi;
    chunk_update(static_cast<scalar_t*>(data) + begin, n,
                 [l, h](T v) { return clamp_value(v, l, h); });
  }
};

// --- kernels: combine the chunk partials

// Norm of chunks [begin, end) by one block, as multi_tensor.cpp's finalize_range: the largest
// scale, then the sums weighted against it; returned to every thread.
template <NormKind K>
__device__ double reduce_partials(const NormPartial* partials, int64_t begin, int64_t end,
                                  double p) {
  using Op = NormOp<K, double>;
  const Op op{p};
  double m = 0;
  for (int64_t c = begin + threadIdx.x; c < end; c += blockDim.x) {
    m = Op::max_scale(m, partials[c].scale);
  }
  m = block_reduce(m, [](double a, double b) { return Op::max_scale(a, b); });  // to every thread
  double s = 0;
  if constexpr (K != NormKind::kLinf) {
    for (int64_t c = begin + threadIdx.x; c < end; c += blockDim.x) {
      s += partials[c].sum * op.weight(partials[c].scale, m);
    }
    s = block_reduce(s, [](double a, double b) { return a + b; });
  }
  return op.finalize(m, s);
}

template <NormKind K, typename out_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    total_norm_kernel(const NormPartial* partials, int64_t n, double p, out_t* out) {
  const double norm = reduce_partials<K>(partials, 0, n, p);
  if (threadIdx.x == 0) *out = static_cast<out_t>(norm);
}

// The chunk range of each of up to kMaxTensorsPerLaunch tensors, passed by value.
struct ChunkRanges {
  int64_t begin[kMaxTensorsPerLaunch];
  int64_t end[kMaxTensorsPerLaunch];
  int64_t first_out;
};

// Block t writes the norm of tensor first_out + t.
template <NormKind K, typename out_t>
__global__ void __launch_bounds__(kFinalizeThreads)
    per_tensor_norm_kernel(const ChunkRanges ranges, const NormPartial* partials, double p,
                           out_t* out) {
  const int t = blockIdx.x;
  const double norm = reduce_partials<K>(partials, ranges.begin[t], ranges.end[t], p);
  if (threadIdx.x == 0) out[ranges.first_out + t] = static_cast<out_t>(norm);
}

// --- the plan: tensors grouped by dtype, chunks numbered across groups

struct DtypeGroup {
  c10::ScalarType dtype;
  std::vector<at::Tensor> tensors;  // dense, non-empty
  int64_t first_chunk;
};

struct Plan {
  std::vector<DtypeGroup> groups;    // in order of first appearance
  std::vector<int64_t> chunk_begin;  // per input tensor: its chunks are [begin, end)
  std::vector<int64_t> chunk_end;
  int64_t chunks = 0;
};

Plan make_plan(const std::vector<at::Tensor>& tensors) {
  Plan plan;
  const size_t n = tensors.size();
  std::vector<int> group_of(n);
  for (size_t i = 0; i < n; ++i) {
    const c10::ScalarType dtype = tensors[i].scalar_type();
    size_t g = 0;
    while (g < plan.groups.size() && plan.groups[g].dtype != dtype) ++g;
    if (g == plan.groups.size()) plan.groups.push_back({dtype, {}, 0});
    group_of[i] = static_cast<int>(g);
  }
  // Number the chunks group by group, tensor by tensor: the order multi_tensor_apply walks them.
  plan.chunk_begin.assign(n, 0);
  plan.chunk_end.assign(n, 0);
  for (size_t g = 0; g < plan.groups.size(); ++g) {
    plan.groups[g].first_chunk = plan.chunks;
    for (size_t i = 0; i < n; ++i) {
      if (group_of[i] != static_cast<int>(g)) continue;
      plan.chunk_begin[i] = plan.chunks;
      if (tensors[i].numel() > 0) {
        plan.groups[g].tensors.push_back(tensors[i]);
        plan.chunks += num_chunks(tensors[i].numel());
      }
      plan.chunk_end[i] = plan.chunks;
    }
  }
  return plan;
}

// --- launchers

// Partials as NormPartial pairs of float64 values, one per chunk of every tensor.
static_assert(sizeof(NormPartial) == 2 * sizeof(double), "NormPartial is two doubles");

const NormPartial* as_partials(const at::Tensor& t) {
  return reinterpret_cast<const NormPartial*>(t.const_data_ptr<double>());
}

at::Tensor norm_partials(const Plan& plan, NormKind kind, double p, const at::Tensor& like) {
  at::Tensor partials = at::empty({plan.chunks, 2}, like.options().dtype(at::kDouble));
  auto* out = reinterpret_cast<NormPartial*>(partials.mutable_data_ptr<double>());
  for (const DtypeGroup& group : plan.groups) {
    BACKPROP_EXT_DISPATCH_FLOATS(group.dtype, "multi_tensor_norm", [&] {
      using T = at::opmath_type<scalar_t>;
      visit_norm_kind(kind, [&](auto tag) {
        constexpr NormKind K = decltype(tag)::value;
        multi_tensor_apply(group.tensors, group.first_chunk,
                           NormPartialJob<scalar_t, K>{out, static_cast<T>(p)});
        if constexpr (K != NormKind::kLinf) {  // the max |x| settles every inf-norm chunk
          multi_tensor_apply(group.tensors, group.first_chunk,
                             NormRescaleJob<scalar_t, K>{out, static_cast<T>(p)});
        }
      });
    });
  }
  return partials;
}

template <typename out_t>
void launch_total_norm(const at::Tensor& partials, NormKind kind, double p, out_t* out) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  visit_norm_kind(kind, [&](auto tag) {
    total_norm_kernel<decltype(tag)::value>
        <<<1, kFinalizeThreads, 0, stream>>>(as_partials(partials), partials.size(0), p, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename out_t>
void launch_per_tensor_norm(const Plan& plan, const at::Tensor& partials, NormKind kind, double p,
                            out_t* out) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto n = static_cast<int64_t>(plan.chunk_begin.size());
  for (int64_t first = 0; first < n; first += kMaxTensorsPerLaunch) {
    const int64_t count = std::min<int64_t>(kMaxTensorsPerLaunch, n - first);
    ChunkRanges ranges;
    ranges.first_out = first;
    for (int64_t t = 0; t < count; ++t) {
      ranges.begin[t] = plan.chunk_begin[first + t];
      ranges.end[t] = plan.chunk_end[first + t];
    }
    visit_norm_kind(kind, [&](auto tag) {
      per_tensor_norm_kernel<decltype(tag)::value>
          <<<static_cast<unsigned>(count), kFinalizeThreads, 0, stream>>>(
              ranges, as_partials(partials), p, out);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

// --- kernels of the stubs (multi_tensor.h)

void multi_tensor_norm_cuda(const std::vector<at::Tensor>& tensors, NormKind kind, double p,
                            at::Tensor& out) {
  const Plan plan = make_plan(tensors);
  if (plan.chunks == 0) {  // only empty tensors: every norm is 0
    out.zero_();
    return;
  }
  const at::Tensor partials = norm_partials(plan, kind, p, tensors[0]);
  const bool per_tensor = out.dim() == 1;
  if (out.scalar_type() == at::kDouble) {
    double* o = out.mutable_data_ptr<double>();
    per_tensor ? launch_per_tensor_norm(plan, partials, kind, p, o)
               : launch_total_norm(partials, kind, p, o);
  } else {
    float* o = out.mutable_data_ptr<float>();
    per_tensor ? launch_per_tensor_norm(plan, partials, kind, p, o)
               : launch_total_norm(partials, kind, p, o);
  }
}

void multi_tensor_scale_cuda(const std::vector<at::Tensor>& tensors, const at::Tensor& total_norm,
                             double max_norm) {
  // The coefficient is computed in the norm's precision, as torch does: float64 stays, float32
  // stays, float16/bfloat16 are read as float32 (their opmath).
  const at::Tensor norm = total_norm.scalar_type() == at::kDouble
                              ? total_norm.contiguous()
                              : total_norm.to(at::kFloat).contiguous();
  const Plan plan = make_plan(tensors);
  for (const DtypeGroup& group : plan.groups) {
    BACKPROP_EXT_DISPATCH_FLOATS(group.dtype, "multi_tensor_scale_", [&] {
      if (norm.scalar_type() == at::kDouble) {
        multi_tensor_apply(group.tensors, 0,
                           ScaleJob<scalar_t, double>{norm.const_data_ptr<double>(), max_norm});
      } else {
        multi_tensor_apply(
            group.tensors, 0,
            ScaleJob<scalar_t, float>{norm.const_data_ptr<float>(), static_cast<float>(max_norm)});
      }
    });
  }
}

void multi_tensor_clamp_cuda(const std::vector<at::Tensor>& tensors, double lo, double hi) {
  const Plan plan = make_plan(tensors);
  for (const DtypeGroup& group : plan.groups) {
    BACKPROP_EXT_DISPATCH_FLOATS(group.dtype, "multi_tensor_clamp_", [&] {
      using T = at::opmath_type<scalar_t>;
      multi_tensor_apply(group.tensors, 0,
                         ClampJob<scalar_t>{static_cast<T>(lo), static_cast<T>(hi)});
    });
  }
}

}  // namespace

BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_norm_stub, CUDA, &multi_tensor_norm_cuda);
BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_scale_stub, CUDA, &multi_tensor_scale_cuda);
BACKPROP_EXT_REGISTER_KERNEL(multi_tensor_clamp_stub, CUDA, &multi_tensor_clamp_cuda);

}  // namespace backprop_ext::cuda
