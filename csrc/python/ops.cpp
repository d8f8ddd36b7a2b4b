// The ops as Python reaches them. Two pieces share one table of the ops (BACKPROP_EXT_PYTHON_OPS):
//
// 1. The Autograd kernel of every differentiable op. When nothing is to be recorded (grad mode
//    off or no input requiring grad, and no forward-mode tangent on an input) it redispatches
//    below autograd, in C++, as torch's own ops do. When only a gradient is to be recorded, in
//    plain eager, an op with a C++ graph node (python/eager_autograd.h) records that node.
//    Otherwise it runs the op's autograd rule: a Python autograd.Function that
//    backprop_ext/ops/<family>.py registers with _set_autograd_rule. So a raw
//    torch.ops.backprop_ext call, a torch.export program and AOTAutograd differentiate (forward
//    and reverse mode, to any order, under functorch transforms), and a call that records nothing
//    never enters Python.
//
// 2. An entry point per op, backprop_ext._C.<op>(*args): the same op with the same meaning as
//    torch.ops.backprop_ext.<op>.default(*args), at the cost of torch's own bindings. Arguments are
//    positional, parsed by the op's C++ signature (no schema matching, no IValue boxing), and the
//    call takes the cheapest route that means the same:
//      a Tensor subclass or a TorchFunctionMode   torch.ops' own call (__torch_function__)
//      a functorch transform active               the dispatcher: every level sees the op
//      nothing to record                          the op below autograd, GIL released
//      a gradient to record, plain eager          the op's C++ node where it has one, else
//                                                 the autograd rule directly (what the kernel
//                                                 would call, without the detour)
//      otherwise (a dispatch mode, tracing, ...)  the dispatcher
//    And backprop_ext._C.<op>_below_autograd(*args): the op with autograd excluded, which is what
//    the rules' forward computes (what an Autograd kernel's redispatch does).
//
// Composite ops (CompositeImplicitAutograd: their autograd is that of the ops they call) have an
// entry point but no rule.
#include "python/ops.h"

#include <ATen/core/boxing/impl/make_boxed_from_unboxed_functor.h>

#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/AutogradState.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/graph_task.h>
#include <torch/csrc/autograd/python_cpp_function.h>
#include <torch/csrc/autograd/python_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/library.h>

#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "python/eager_autograd.h"

// From ATen/functorch/DynamicLayer.h, which includes headers torch does not ship.
namespace at::functorch {
TORCH_API void setSingleLevelAutogradFunctionAllowed(bool allowed);
TORCH_API bool getSingleLevelAutogradFunctionAllowed();
}  // namespace at::functorch

namespace backprop_ext {
namespace {

using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using Mask3 = std::array<bool, 3>;
using OptTensor = std::optional<at::Tensor>;
using T = const at::Tensor&;
using OT = const OptTensor&;

// X(name, has a Python autograd rule, C++ signature: the schema's in csrc/ops/schemas.cpp)
#define BACKPROP_EXT_PYTHON_OPS(X)                                                      \
  X(activation_fwd, true, at::Tensor(T, c10::string_view, double, double))              \
  X(activation_fwd_, true, void(at::Tensor&, c10::string_view, double, double))         \
  X(activation_bwd, true, at::Tensor(T, T, c10::string_view, double, double))           \
  X(softmax_fwd, true, at::Tensor(T, int64_t, bool))                                    \
  X(softmax_bwd, true, at::Tensor(T, T, int64_t, bool))                                 \
  X(logsumexp_fwd, true, at::Tensor(T, int64_t))                                        \
  X(logsumexp_bwd, true, at::Tensor(T, T, T, int64_t))                                  \
  X(cross_entropy_fwd, true, Tensor3(T, T, OT, int64_t, bool))                          \
  X(cross_entropy_bwd, true, at::Tensor(T, T, OT, T, T, OT, int64_t))                   \
  X(cross_entropy_loss_fwd, true, Tensor3(T, T, OT, int64_t, double, c10::string_view)) \
  X(cross_entropy, false, at::Tensor(T, T, OT, c10::string_view, int64_t, double))      \
  X(linear_fwd, true, Tensor2(T, T, OT, c10::string_view, double, double, bool))        \
  X(linear_bwd, true, Tensor3(T, T, T, T, c10::string_view, double, double, Mask3))     \
  X(linear_preact_bwd, true, Tensor2(T, T, c10::string_view, double, double, bool))     \
  X(gated_fwd, true, at::Tensor(T, T, c10::string_view, double, double))                \
  X(gated_bwd, true, Tensor2(T, T, T, c10::string_view, double, double))

enum OpId : int {
#define BACKPROP_EXT_ID(name, rule, sig) k_##name,
  BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_ID)
#undef BACKPROP_EXT_ID
      kNumOps
};

constexpr const char* kOpNames[] = {
#define BACKPROP_EXT_NAME(name, rule, sig) #name,
    BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_NAME)
#undef BACKPROP_EXT_NAME
};

constexpr bool kHasRule[] = {
#define BACKPROP_EXT_RULE(name, rule, sig) rule,
    BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_RULE)
#undef BACKPROP_EXT_RULE
};

// The autograd rules (set once from Python, kept for the life of the process) and the
// torch.ops.backprop_ext.<op>.default objects (looked up on first use). Touched with the GIL held.
PyObject* g_rules[kNumOps] = {};
PyObject* g_torch_ops[kNumOps] = {};

PyObject* torch_op(OpId id) {
  if (g_torch_ops[id] == nullptr) {
    PyObject* torch = PyImport_ImportModule("torch");
    if (torch == nullptr) throw python_error();
    PyObject* op = PyObject_GetAttrString(torch, "ops");
    Py_DECREF(torch);
    for (const char* attr : {"backprop_ext", kOpNames[id], "default"}) {
      if (op == nullptr) throw python_error();
      PyObject* next = PyObject_GetAttrString(op, attr);
      Py_DECREF(op);
      op = next;
    }
    if (op == nullptr) throw python_error();
    g_torch_ops[id] = op;
  }
  return g_torch_ops[id];
}

PyObject* rule_of(OpId id) {
  TORCH_CHECK(g_rules[id] != nullptr, "backprop_ext::", kOpNames[id],
              ": no autograd rule is registered (import backprop_ext registers them)");
  return g_rules[id];
}

// --- what is to be recorded

// True when a call with these inputs records autograd history: a gradient (grad mode on and an
// input requiring grad) or a forward-mode tangent (forward grad mode on and an input carrying
// one at level 0, the eager and the functorch jvp level alike).
struct Records {
  bool grad = at::GradMode::is_enabled();
  bool fw_grad = c10::AutogradState::get_tls_state().get_fw_grad_mode();
  bool any = false;
  bool tangent = false;  // a forward-mode tangent among them

  void operator()(const at::Tensor& t) {
    if (!t.defined()) return;
    const bool has_tangent = fw_grad && t._fw_grad(0).defined();
    tangent = tangent || has_tangent;
    any = any || has_tangent || (grad && t.requires_grad());
  }
  void operator()(const OptTensor& t) {
    if (t.has_value()) (*this)(*t);
  }
  void operator()(const c10::IValue& v) {
    if (v.isTensor()) (*this)(v.toTensor());
  }
  template <typename Other>
  void operator()(const Other&) {}
};

bool functorch_active() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

// No dispatch key switched on or off by a mode (autocast, a TorchDispatchMode, tracing,
// functorch, inference mode): the keys above Autograd have nothing to do, and the dispatcher
// would go straight to the Autograd kernel.
bool plain_eager() {
  const auto tls = c10::impl::tls_local_dispatch_key_set();
  return tls.included_ == c10::default_included_set && tls.excluded_ == c10::default_excluded_set;
}

// The grad modes where a rule was called. A rule's forward, an autograd.Function's, runs with
// grad and forward grad off; its call of the op below autograd puts them back, so that the
// functorch levels under this one (a grad or a jvp transform) see the modes their transforms run
// in, as they do under torch's own autograd kernels. (Autograd at this level is excluded by the
// dispatch keys, whatever the modes.)
struct RuleModes {
  bool grad;
  bool fw_grad;
};
thread_local std::optional<RuleModes> t_rule_modes;

class InRule {
 public:
  InRule() : previous_(t_rule_modes) {
    t_rule_modes = RuleModes{at::GradMode::is_enabled(),
                             c10::AutogradState::get_tls_state().get_fw_grad_mode()};
  }
  ~InRule() { t_rule_modes = previous_; }
  InRule(const InRule&) = delete;
  InRule& operator=(const InRule&) = delete;

 private:
  std::optional<RuleModes> previous_;
};

// --- the ops with a C++ graph node for plain eager (python/eager_autograd.h)

template <OpId Id>
struct EagerNode {
  static constexpr bool kHas = false;
};
#define BACKPROP_EXT_EAGER_NODE(name)         \
  template <>                                 \
  struct EagerNode<k_##name> {                \
    static constexpr bool kHas = true;        \
    static constexpr auto run = &eager::name; \
  };
BACKPROP_EXT_EAGER_NODE(activation_fwd)
BACKPROP_EXT_EAGER_NODE(gated_fwd)
BACKPROP_EXT_EAGER_NODE(softmax_fwd)
BACKPROP_EXT_EAGER_NODE(logsumexp_fwd)
BACKPROP_EXT_EAGER_NODE(cross_entropy_loss_fwd)
#undef BACKPROP_EXT_EAGER_NODE

// A call that records a gradient and nothing else, in plain eager: the op's C++ node, not its
// Python rule. (Forward mode, functorch and the modes take the rule, which has their formulas.)
bool takes_eager_node(const Records& records) {
  return records.any && !records.tangent && plain_eager();
}

template <typename R>
void push_outputs(torch::jit::Stack* stack, R out) {
  if constexpr (c10::guts::is_instantiation_of<std::tuple, R>::value) {
    std::apply([stack](auto&... v) { (torch::jit::push(*stack, std::move(v)), ...); }, out);
  } else {
    torch::jit::push(*stack, std::move(out));
  }
}

// The Autograd kernel's way to the node: the op's arguments unboxed from the stack.
template <OpId Id, typename Signature>
struct BoxedEager;

template <OpId Id, typename R, typename... Args>
struct BoxedEager<Id, R(Args...)> {
  template <size_t... I>
  static void run(torch::jit::Stack* stack, std::index_sequence<I...>) {
    constexpr size_t n = sizeof...(Args);
    // Kept alive while the call runs: a string_view argument points into its IValue.
    std::vector<c10::IValue> args(stack->end() - n, stack->end());
    torch::jit::drop(*stack, n);
    push_outputs(stack, EagerNode<Id>::run(
                            c10::impl::ivalue_to_arg<std::decay_t<Args>, false>::call(args[I])...));
  }
};

// Runs the node of op `id` on the stack's arguments; false (the stack untouched) when the op has
// none.
bool run_eager_node(OpId id, torch::jit::Stack* stack) {
  switch (id) {
#define BACKPROP_EXT_CASE(name, rule, sig)                                              \
  case k_##name:                                                                        \
    if constexpr (EagerNode<k_##name>::kHas) {                                          \
      using Sig = sig;                                                                  \
      BoxedEager<k_##name, Sig>::run(                                                   \
          stack, std::make_index_sequence<                                              \
                     c10::guts::infer_function_traits_t<Sig>::number_of_parameters>{}); \
      return true;                                                                      \
    }                                                                                   \
    return false;
    BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_CASE)
#undef BACKPROP_EXT_CASE
    default: return false;
  }
}

// --- 1. the Autograd kernel

// Inside a functorch transform the kernel runs once per level on that level's tensors, like
// torch's own autograd kernels; the rule, a single-level Function, records at this level only,
// which functorch allows while this guard lives (as it does for its own such Functions).
struct AllowSingleLevelFunctions {
  bool previous = at::functorch::getSingleLevelAutogradFunctionAllowed();
  AllowSingleLevelFunctions() { at::functorch::setSingleLevelAutogradFunctionAllowed(true); }
  ~AllowSingleLevelFunctions() { at::functorch::setSingleLevelAutogradFunctionAllowed(previous); }
};

void run_rule(OpId id, const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t n = schema.arguments().size();
  pybind11::gil_scoped_acquire gil;
  pybind11::tuple args(n);
  for (size_t i = 0; i < n; ++i) {
    args[i] = torch::jit::toPyObject(std::move((*stack)[stack->size() - n + i]));
  }
  torch::jit::drop(*stack, n);
  pybind11::object out;
  {
    const AllowSingleLevelFunctions allow;
    const InRule in_rule;
    out = pybind11::handle(rule_of(id))(*args);
  }
  const auto& returns = schema.returns();
  if (returns.size() == 1) {
    stack->push_back(torch::jit::toIValue(out, returns[0].type()));
  } else if (returns.size() > 1) {
    const auto outs = out.cast<pybind11::tuple>();
    TORCH_CHECK(outs.size() == returns.size(), "backprop_ext::", kOpNames[id],
                ": its autograd rule returned ", outs.size(), " values, expected ", returns.size());
    for (size_t i = 0; i < returns.size(); ++i) {
      stack->push_back(torch::jit::toIValue(outs[i], returns[i].type()));
    }
  }
}

class AutogradKernel final : public c10::OperatorKernel {
 public:
  explicit AutogradKernel(OpId id) : id_(id) {}

  void operator()(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                  torch::jit::Stack* stack) {
    Records records;
    for (const auto& v : torch::jit::last(*stack, op.schema().arguments().size())) records(v);
    if (takes_eager_node(records) && run_eager_node(id_, stack)) return;
    if (records.any) {
      run_rule(id_, op, stack);
      return;
    }
    at::AutoDispatchBelowAutograd guard;
    op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
  }

 private:
  OpId id_;
};

TORCH_LIBRARY_IMPL(backprop_ext, Autograd, m) {
  for (int id = 0; id < kNumOps; ++id) {
    if (kHasRule[id]) {
      m.impl(kOpNames[id], torch::CppFunction::makeFromBoxedFunctor(
                               std::make_unique<AutogradKernel>(static_cast<OpId>(id))));
    }
  }
}

// --- 2. the entry points

// Python -> C++ by the op's parameter type. `op` and `i` name the argument in messages.
[[noreturn]] void bad_argument(OpId id, size_t i, const char* expected, PyObject* got) {
  const auto& schema =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow((std::string("backprop_ext::") + kOpNames[id]).c_str(), "")
          .schema();
  TORCH_CHECK_TYPE(false, kOpNames[id], ": expected ", schema.arguments()[i].name(), " to be ",
                   expected, ", got ", Py_TYPE(got)->tp_name);
}

template <typename T>
struct FromPython;

template <>
struct FromPython<at::Tensor> {
  static at::Tensor get(PyObject* o, OpId id, size_t i) {
    if (!THPVariable_Check(o)) bad_argument(id, i, "a Tensor", o);
    return THPVariable_Unpack(o);
  }
};

template <>
struct FromPython<OptTensor> {
  static OptTensor get(PyObject* o, OpId id, size_t i) {
    if (o == Py_None) return std::nullopt;
    if (!THPVariable_Check(o)) bad_argument(id, i, "a Tensor or None", o);
    return THPVariable_Unpack(o);
  }
};

template <>
struct FromPython<c10::string_view> {
  static c10::string_view get(PyObject* o, OpId id, size_t i) {
    Py_ssize_t size = 0;
    const char* data = PyUnicode_Check(o) ? PyUnicode_AsUTF8AndSize(o, &size) : nullptr;
    if (data == nullptr) {
      if (PyErr_Occurred()) throw python_error();
      bad_argument(id, i, "a str", o);
    }
    return c10::string_view(data, static_cast<size_t>(size));  // lives as long as `o`
  }
};

template <>
struct FromPython<double> {
  static double get(PyObject* o, OpId id, size_t i) {
    if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
    if (THPVariable_Check(o) || !PyNumber_Check(o)) bad_argument(id, i, "a number", o);
    const double value = PyFloat_AsDouble(o);
    if (value == -1.0 && PyErr_Occurred()) throw python_error();
    return value;
  }
};

template <>
struct FromPython<int64_t> {
  static int64_t get(PyObject* o, OpId id, size_t i) {
    if (PyBool_Check(o) || THPVariable_Check(o) || !PyIndex_Check(o)) {
      bad_argument(id, i, "an int", o);
    }
    const long long value = PyLong_AsLongLong(o);
    if (value == -1 && PyErr_Occurred()) throw python_error();
    return value;
  }
};

template <>
struct FromPython<bool> {
  static bool get(PyObject* o, OpId id, size_t i) {
    if (!PyBool_Check(o)) bad_argument(id, i, "a bool", o);
    return o == Py_True;
  }
};

template <>
struct FromPython<Mask3> {
  static Mask3 get(PyObject* o, OpId id, size_t i) {
    Mask3 mask{};
    const bool sequence = PyTuple_Check(o) || PyList_Check(o);
    if (!sequence || PySequence_Fast_GET_SIZE(o) != 3) bad_argument(id, i, "3 bools", o);
    for (Py_ssize_t k = 0; k < 3; ++k) {
      PyObject* item = PySequence_Fast_GET_ITEM(o, k);
      if (!PyBool_Check(item)) bad_argument(id, i, "3 bools", o);
      mask[k] = item == Py_True;
    }
    return mask;
  }
};

PyObject* to_python(at::Tensor t) {
  return THPVariable_Wrap(std::move(t));
}

template <typename... Ts>
PyObject* to_python(std::tuple<Ts...> values) {
  PyObject* out = PyTuple_New(sizeof...(Ts));
  if (out == nullptr) throw python_error();
  std::apply(
      [out](auto&... v) {
        Py_ssize_t k = 0;
        ((PyTuple_SET_ITEM(out, k++, to_python(std::move(v)))), ...);
      },
      values);
  return out;
}

// A tensor argument that is neither a Tensor nor a Parameter (a subclass, which may define
// __torch_function__), or a TorchFunctionMode: torch.ops' own call handles it.
template <typename Arg>
constexpr bool kIsTensor =
    std::is_same_v<std::decay_t<Arg>, at::Tensor> || std::is_same_v<std::decay_t<Arg>, OptTensor>;

bool is_plain(PyObject* o) {
  return o == Py_None || THPVariable_CheckExact(o) || !THPVariable_Check(o);
}

template <OpId Id, typename Signature>
struct Entry;

template <OpId Id, typename R, typename... Args>
struct Entry<Id, R(Args...)> {
  using Values = std::tuple<std::decay_t<Args>...>;
  static constexpr Py_ssize_t kArity = sizeof...(Args);

  static const c10::TypedOperatorHandle<R(Args...)>& handle() {
    static const auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow((std::string("backprop_ext::") + kOpNames[Id]).c_str(), "")
            .template typed<R(Args...)>();
    return op;
  }

  template <size_t... I>
  static Values parse(PyObject* const* args, std::index_sequence<I...>) {
    return Values{FromPython<std::decay_t<Args>>::get(args[I], Id, I)...};  // left to right
  }

  template <size_t... I>
  static bool all_plain(PyObject* const* args, std::index_sequence<I...>) {
    return ((!kIsTensor<Args> || is_plain(args[I])) && ...);
  }

  // Runs the op on parsed values with the GIL released: below autograd or through the
  // dispatcher; kForRule: below autograd in a rule's forward, with the rule caller's grad modes.
  template <bool kBelowAutograd, bool kForRule = false>
  static PyObject* run(Values& values) {
    const auto call = [&values]() -> R {
      pybind11::gil_scoped_release no_gil;
      std::optional<at::AutoDispatchBelowAutograd> below;
      if constexpr (kBelowAutograd) below.emplace();
      std::optional<c10::AutoGradMode> grad;
      std::optional<c10::AutoFwGradMode> fw_grad;
      if (kForRule && t_rule_modes.has_value()) {
        grad.emplace(t_rule_modes->grad);
        fw_grad.emplace(t_rule_modes->fw_grad);
      }
      return std::apply([](auto&... v) -> R { return handle().call(v...); }, values);
    };
    if constexpr (std::is_void_v<R>) {
      call();
      Py_RETURN_NONE;
    } else {
      return to_python(call());
    }
  }

  // The op's C++ node (takes_eager_node), with the GIL released.
  static PyObject* run_eager(Values& values) {
    R out;
    {
      pybind11::gil_scoped_release no_gil;
      out = std::apply(EagerNode<Id>::run, values);
    }
    return to_python(std::move(out));
  }

  static void check_arity(Py_ssize_t nargs) {
    TORCH_CHECK_TYPE(nargs == kArity, kOpNames[Id], "() takes ", kArity,
                     " positional arguments, got ", nargs);
  }

  static PyObject* call(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    check_arity(nargs);
    if (at::impl::torch_function_mode_enabled() ||
        !all_plain(args, std::index_sequence_for<Args...>{})) {
      return PyObject_Vectorcall(torch_op(Id), args, nargs, nullptr);
    }
    Values values = parse(args, std::index_sequence_for<Args...>{});
    if (functorch_active()) return run<false>(values);
    Records records;
    std::apply([&records](const auto&... v) { (records(v), ...); }, values);
    if (!records.any) return run<true>(values);
    if constexpr (EagerNode<Id>::kHas) {
      if (takes_eager_node(records)) return run_eager(values);
    }
    if (kHasRule[Id] && plain_eager()) {
      const InRule in_rule;
      return PyObject_Vectorcall(rule_of(Id), args, nargs, nullptr);
    }
    return run<false>(values);
    END_HANDLE_TH_ERRORS
  }

  static PyObject* call_below_autograd(PyObject* /*module*/, PyObject* const* args,
                                       Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    check_arity(nargs);
    Values values = parse(args, std::index_sequence_for<Args...>{});
    return run<true, true>(values);
    END_HANDLE_TH_ERRORS
  }
};

PyObject* set_autograd_rule(PyObject* /*module*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(nargs == 2 && PyUnicode_Check(args[0]) && PyCallable_Check(args[1]),
                   "_set_autograd_rule(op_name: str, rule: callable)");
  const char* name = PyUnicode_AsUTF8(args[0]);
  if (name == nullptr) return nullptr;
  for (int id = 0; id < kNumOps; ++id) {
    if (kHasRule[id] && std::strcmp(name, kOpNames[id]) == 0) {
      Py_INCREF(args[1]);
      Py_XSETREF(g_rules[id], args[1]);
      Py_RETURN_NONE;
    }
  }
  TORCH_CHECK_VALUE(false, "_set_autograd_rule: backprop_ext has no op '", name,
                    "' taking an autograd rule");
  END_HANDLE_TH_ERRORS
}

// _engine_runs(node) -> bool: whether the backward pass now running runs the graph node `node`
// or captures the gradient sent to it. torch._C._will_engine_execute_node answers the same, but
// raises, rather than answer True, for the AccumulateGrad node of a leaf that autograd.grad
// captures; a raised c10::Error records a backtrace, tens of microseconds on every backward of a
// layer whose weight is such a leaf (linear's backward asks, see ops/linear.py _wanted).
// A Python Function's node: THPFunction::cdata is a std::weak_ptr<PyNode> on torch 2.11-2.13 and
// an owning pointer on later releases. The node outlives the call either way: the graph task that
// runs it holds it.
template <typename P>
torch::autograd::Node* node_of(const std::weak_ptr<P>& cdata) {
  return cdata.lock().get();
}
template <typename P>
torch::autograd::Node* node_of(const P& cdata) {
  return cdata.get();
}

PyObject* engine_runs(PyObject* /*module*/, PyObject* arg) {
  HANDLE_TH_ERRORS
  torch::autograd::Node* node = nullptr;
  if (THPFunction_Check(arg)) {
    node = node_of(reinterpret_cast<THPFunction*>(arg)->cdata);
  } else if (torch::autograd::THPCppFunction_Check(arg)) {
    node = reinterpret_cast<torch::autograd::THPCppFunction*>(arg)->cdata.get();
  } else {
    TORCH_CHECK_TYPE(false, "_engine_runs: expected a graph node (a grad_fn), got ",
                     Py_TYPE(arg)->tp_name);
  }
  const auto* exec_info = torch::autograd::get_current_graph_task_exec_info();
  const auto* in_graph = torch::autograd::get_current_graph_task_nodes_in_graph();
  TORCH_CHECK(exec_info != nullptr && in_graph != nullptr,
              "_engine_runs: called outside a backward pass");
  bool runs = node != nullptr && in_graph->count(node) > 0;
  if (runs && !exec_info->empty()) {  // autograd.grad: only the nodes on paths to its inputs
    const auto it = exec_info->find(node);
    runs = it != exec_info->end() && it->second.should_execute();
  }
  return PyBool_FromLong(runs ? 1 : 0);
  END_HANDLE_TH_ERRORS
}

// --- the entry points' list, for tests/test_op_registry.py and backprop_ext/ops/entry.py

// An argument's or a return's C++ type in the schema's type names: Tensor, Tensor?, str, float,
// int, bool, bool[3]; "(a!)" after a tensor the op writes (a non-const reference).
template <typename A>
struct FixedLength : std::integral_constant<size_t, 0> {};
template <typename E, size_t N>
struct FixedLength<std::array<E, N>> : std::integral_constant<size_t, N> {};

template <typename Arg>
std::string schema_type() {
  using A = std::decay_t<Arg>;
  std::string name = c10::getTypePtrCopy<A>()->str();
  if constexpr (FixedLength<A>::value > 0) {
    name = name.substr(0, name.size() - 2) + "[" + std::to_string(FixedLength<A>::value) + "]";
  }
  if constexpr (std::is_lvalue_reference_v<Arg> && !std::is_const_v<std::remove_reference_t<Arg>>) {
    name += "(a!)";
  }
  return name;
}

template <typename R>
struct ReturnsText {
  static std::string get() { return schema_type<R>(); }
};
template <>
struct ReturnsText<void> {
  static std::string get() { return "()"; }
};
template <typename... Rs>
struct ReturnsText<std::tuple<Rs...>> {
  static std::string get() {
    std::string out;
    ((out += (out.empty() ? "" : ", ") + schema_type<Rs>()), ...);
    return "(" + out + ")";
  }
};

// "(Tensor, int, bool) -> Tensor": the argument list the entry point parses, and its returns.
template <typename Signature>
struct SignatureText;
template <typename R, typename... Args>
struct SignatureText<R(Args...)> {
  static std::string get() {
    std::string args;
    ((args += (args.empty() ? "" : ", ") + schema_type<Args>()), ...);
    return "(" + args + ") -> " + ReturnsText<R>::get();
  }
};

// Built when asked for, not when the library loads (the type singletons are torch's).
std::string (*const kSignatures[])() = {
#define BACKPROP_EXT_SIGNATURE(name, rule, sig) &SignatureText<sig>::get,
    BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_SIGNATURE)
#undef BACKPROP_EXT_SIGNATURE
};

// _entry_points() -> {op: (signature, takes_rule, rule)}, in the table's order: each entry
// point's signature (SignatureText), whether its op takes an autograd rule, and the rule set by
// _set_autograd_rule (None before).
PyObject* entry_points(PyObject* /*module*/, PyObject* /*unused*/) {
  HANDLE_TH_ERRORS
  pybind11::dict out;
  for (int id = 0; id < kNumOps; ++id) {
    pybind11::object rule = g_rules[id] != nullptr
                                ? pybind11::reinterpret_borrow<pybind11::object>(g_rules[id])
                                : pybind11::none();
    out[kOpNames[id]] = pybind11::make_tuple(kSignatures[id](), kHasRule[id], rule);
  }
  return out.release().ptr();
  END_HANDLE_TH_ERRORS
}

#define BACKPROP_EXT_FASTCALL(fn) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn))

PyMethodDef kMethods[] = {
#define BACKPROP_EXT_METHOD(name, rule, sig)                                               \
  {#name, BACKPROP_EXT_FASTCALL((&Entry<k_##name, sig>::call)), METH_FASTCALL,             \
   "backprop_ext::" #name ", positional arguments: as torch.ops.backprop_ext." #name       \
   ".default, cheaper"},                                                                   \
      {#name "_below_autograd",                                                            \
       BACKPROP_EXT_FASTCALL((&Entry<k_##name, sig>::call_below_autograd)), METH_FASTCALL, \
       "backprop_ext::" #name " with autograd excluded (what a rule's forward computes)"},
    BACKPROP_EXT_PYTHON_OPS(BACKPROP_EXT_METHOD)
#undef BACKPROP_EXT_METHOD
        {"_entry_points", entry_points, METH_NOARGS,
         "_entry_points() -> {op: (signature, takes_rule, rule)}: the entry points' list (see "
         "csrc/python/ops.cpp)"},
    {"_engine_runs", engine_runs, METH_O,
     "_engine_runs(node) -> bool: whether the running backward pass runs node or captures the "
     "gradient sent to it (torch._C._will_engine_execute_node without its error for captured "
     "leaves)"},
    {"_set_autograd_rule", BACKPROP_EXT_FASTCALL(&set_autograd_rule), METH_FASTCALL,
     "_set_autograd_rule(op_name, rule): the Python callable the op's Autograd kernel runs "
     "when a call records autograd history"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

int add_python_ops(PyObject* module) {
  return PyModule_AddFunctions(module, kMethods);
}

}  // namespace backprop_ext
