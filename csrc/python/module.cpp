// The Python module backprop_ext._C: importing it loads this library, which runs the op
// registrations (csrc/ops/schemas.cpp and each family's kernels). It holds activation_table(), the
// ops' entry points (csrc/python/ops.cpp) and the allocation meter (csrc/profiling/).
#include <Python.h>

#include "math/activation_math.h"
#include "profiling/allocation_meter.h"
#include "python/ops.h"

namespace {

using backprop_ext::ActivationReads;

// activation_table() -> ((name, reads_output, signature, module), ...): activation_table.h's
// rows, for backprop_ext/ops/activation.py to derive the Python side from.
PyObject* activation_table(PyObject*, PyObject*) {
#define BACKPROP_EXT_ROW(Enum, name, reads, signature, module)                           \
  Py_BuildValue("(sOss)", name,                                                          \
                ActivationReads::reads == ActivationReads::kOutput ? Py_True : Py_False, \
                signature, module),
  PyObject* rows[] = {BACKPROP_EXT_ACTIVATIONS(BACKPROP_EXT_ROW)};
#undef BACKPROP_EXT_ROW
  const Py_ssize_t n = sizeof(rows) / sizeof(rows[0]);
  PyObject* table = PyTuple_New(n);
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (rows[i] == nullptr || table == nullptr) {
      for (Py_ssize_t j = i; j < n; ++j) Py_XDECREF(rows[j]);
      Py_XDECREF(table);
      return nullptr;
    }
    PyTuple_SetItem(table, i, rows[i]);  // steals the reference
  }
  return table;
}

PyMethodDef methods[] = {
    {"activation_table", activation_table, METH_NOARGS,
     "The activation table (csrc/ops/activation_table.h): a tuple of (name, reads_output, "
     "torch.nn.functional signature, torch.nn module) rows."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods, nullptr, nullptr, nullptr, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m != nullptr &&
      (backprop_ext::add_python_ops(m) != 0 || backprop_ext::add_allocation_meter(m) != 0)) {
    Py_CLEAR(m);
  }
  return m;
}
