// How the CPU kernels split their work across threads (at::parallel_for, OpenMP under ATen).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace backprop_ext::cpu {

// Elements per thread below which splitting costs more than it saves (ATen's own value).
constexpr int64_t kGrainSize = 32768;

// Runs f(begin, end) over [0, n) elements of elementwise work.
template <typename F>
void parallel_elements(int64_t n, const F& f) {
  at::parallel_for(0, n, kGrainSize, f);
}

// Runs f(begin, end) over [0, count) slices (rows, tiles, chunks) of `per_slice` elements each,
// so that a task holds about kGrainSize elements however long the slices are.
template <typename F>
void parallel_slices(int64_t count, int64_t per_slice, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, per_slice));
  at::parallel_for(0, count, grain, f);
}

}  // namespace backprop_ext::cpu
