// The ops as Python reaches them (csrc/python/ops.cpp): the Autograd kernels that run each op's
// Python autograd rule, and backprop_ext._C's fast entry points.
#pragma once

#include <Python.h>

namespace backprop_ext {

// Adds the entry points (one per op, see csrc/python/ops.cpp) and _set_autograd_rule to `module`.
// Returns 0, or -1 with a Python error set.
int add_python_ops(PyObject* module);

}  // namespace backprop_ext
