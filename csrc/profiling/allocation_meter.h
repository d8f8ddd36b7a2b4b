// The CPU allocator's peak between two calls (csrc/profiling/allocation_meter.cpp), for measuring
// activation memory without a GPU: backprop_ext._memory.AllocatorPeak.
#pragma once

#include <Python.h>

namespace backprop_ext {

// Adds _allocation_meter_start and _allocation_meter_stop to `module`. Returns 0, or -1 with a
// Python error set.
int add_allocation_meter(PyObject* module);

}  // namespace backprop_ext
