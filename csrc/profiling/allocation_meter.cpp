// The CPU allocator's peak between two calls: the honest CPU analogue of
// torch.cuda.max_memory_allocated(), used by backprop_ext._memory.AllocatorPeak.
//
// PyTorch's CPU allocator reports every allocation and free to the calling thread's profiler
// state when that state asks for memory events (c10::reportMemoryUsageToProfiler: the hook
// torch.profiler's profile_memory=True uses). The meter is such a state and nothing more: it
// records no ops, its configuration reads as disabled (torch.autograd._profiler_enabled() stays
// False), and it sums the CPU allocations' sizes as they come, keeping the peak. Unlike a dispatch
// mode, which sees the tensors ops return, it sees the buffers kernels allocate and free inside
// themselves. It covers the thread that starts it and the threads that inherit its thread-local
// state (the autograd engine's); not what the BLAS allocates outside PyTorch's allocator.
#include "profiling/allocation_meter.h"

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/profiler/orchestration/observer.h>

#include <atomic>
#include <cstdint>
#include <memory>

namespace backprop_ext {
namespace {

namespace profiler = torch::profiler::impl;

class AllocationMeter final : public profiler::ProfilerStateBase {
 public:
  AllocationMeter()
      : ProfilerStateBase(profiler::ProfilerConfig(profiler::ProfilerState::Disabled)) {}

  bool memoryProfilingEnabled() const override { return true; }
  profiler::ActiveProfilerType profilerType() override {
    return profiler::ActiveProfilerType::NONE;
  }

  void reportMemoryUsage(void* /*ptr*/, int64_t alloc_size, size_t /*total_allocated*/,
                         size_t /*total_reserved*/, c10::Device device) override {
    if (device.type() != c10::DeviceType::CPU) return;
    const int64_t live = live_.fetch_add(alloc_size) + alloc_size;
    int64_t peak = peak_.load();
    while (live > peak && !peak_.compare_exchange_weak(peak, live)) {
    }
  }

  int64_t live() const { return live_.load(); }
  int64_t peak() const { return peak_.load(); }

 private:
  // Bytes allocated since the start, less those freed (a block allocated before the start and
  // freed during the meter is not reported: the allocator only reports blocks it saw allocated
  // while memory events were on).
  std::atomic<int64_t> live_{0};
  std::atomic<int64_t> peak_{0};
};

// The thread's profiler state, if any (ProfilerStateBase's own accessor is named differently
// across torch versions; this is what it reads).
c10::DebugInfoBase* thread_profiler_state() {
  return c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE);
}

// _allocation_meter_start(): starts a meter on this thread. RuntimeError when a profiler (torch's
// or another meter) is already active on it: there is one profiler state per thread.
PyObject* start(PyObject* /*module*/, PyObject* /*args*/) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(thread_profiler_state() == nullptr,
              "backprop_ext: cannot meter the CPU allocator while a profiler is active on this "
              "thread");
  c10::ThreadLocalDebugInfo::_push(c10::DebugInfoKind::PROFILER_STATE,
                                   std::make_shared<AllocationMeter>());
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

// _allocation_meter_stop() -> (peak, live): stops this thread's meter; bytes at the peak and
// still held, both relative to the start.
PyObject* stop(PyObject* /*module*/, PyObject* /*args*/) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(dynamic_cast<AllocationMeter*>(thread_profiler_state()) != nullptr,
              "backprop_ext: no allocation meter is active on this thread");
  const auto state = c10::ThreadLocalDebugInfo::_pop(c10::DebugInfoKind::PROFILER_STATE);
  const auto* meter = static_cast<const AllocationMeter*>(state.get());
  return Py_BuildValue("(LL)", static_cast<long long>(meter->peak()),
                       static_cast<long long>(meter->live()));
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"_allocation_meter_start", start, METH_NOARGS,
     "Starts metering the CPU allocator on this thread (backprop_ext._memory.AllocatorPeak)."},
    {"_allocation_meter_stop", stop, METH_NOARGS,
     "Stops this thread's meter: (peak bytes, bytes still held), relative to its start."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

int add_allocation_meter(PyObject* module) {
  return PyModule_AddFunctions(module, kMethods);
}

}  // namespace backprop_ext
