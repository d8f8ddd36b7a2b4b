// ATen's DispatchStub pattern, in small: each op is written once, in csrc/ops/<family>.cpp
// (argument checks, layout, allocation, and its registration for every device), and calls a kernel
// stub for the work itself; the stub jumps to the kernel of the tensors' device, which
// cpu/<family>.cpp and cuda/<family>.cu register. So the CPU and CUDA files hold kernels only, and
// a check or a layout rule cannot differ between devices.
//
//   // <family>.h: the kernel's signature and the stub
//   using activation_fwd_fn = void (*)(const at::Tensor& x, at::Tensor& out, ...);
//   BACKPROP_EXT_DECLARE_STUB(activation_fwd_stub, activation_fwd_fn);
//   // <family>.cpp: the stub itself, and the op calling it
//   BACKPROP_EXT_DEFINE_STUB(activation_fwd_stub);
//   activation_fwd_stub(x.device().type(), x, out, ...);
//   // cpu/<family>.cpp, cuda/<family>.cu: the kernels
//   BACKPROP_EXT_REGISTER_KERNEL(activation_fwd_stub, CPU, &activation_fwd_kernel);
//
// Stubs are constant-initialized (two null pointers), so they are filled before any op can run,
// whatever order the shared library's static initializers take.
#pragma once

#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <utility>

// Registers a family's ops, `fn(m)` (its m.impl calls), for the CPU and, in a build with CUDA
// kernels, the CUDA dispatch key: the ops are device-independent, so one list serves both. Use it
// at namespace scope in csrc/ops/<family>.cpp, which includes torch/library.h.
#ifdef BACKPROP_EXT_WITH_CUDA
#define BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(fn) \
  TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {           \
    fn(m);                                             \
  }                                                    \
  TORCH_LIBRARY_IMPL(backprop_ext, CUDA, m) {          \
    fn(m);                                             \
  }
#else
#define BACKPROP_EXT_REGISTER_OPS_FOR_EVERY_DEVICE(fn) \
  TORCH_LIBRARY_IMPL(backprop_ext, CPU, m) {           \
    fn(m);                                             \
  }
#endif

namespace backprop_ext {

template <typename Fn>
struct DeviceStub {
  Fn cpu = nullptr;
  Fn cuda = nullptr;

  template <typename... Args>
  decltype(auto) operator()(c10::DeviceType device, Args&&... args) const {
    Fn fn = device == c10::DeviceType::CPU ? cpu : device == c10::DeviceType::CUDA ? cuda : nullptr;
    TORCH_CHECK(fn != nullptr, "backprop_ext: no kernel for device type ", device,
                device == c10::DeviceType::CUDA ? " (this build has no CUDA kernels)" : "");
    return (*fn)(std::forward<Args>(args)...);
  }

  void set(c10::DeviceType device, Fn fn) { (device == c10::DeviceType::CPU ? cpu : cuda) = fn; }
};

#define BACKPROP_EXT_DECLARE_STUB(stub, fn_type) extern ::backprop_ext::DeviceStub<fn_type> stub
#define BACKPROP_EXT_DEFINE_STUB(stub) decltype(stub) stub

#define BACKPROP_EXT_STUB_CONCAT_(a, b) a##b
#define BACKPROP_EXT_STUB_CONCAT(a, b) BACKPROP_EXT_STUB_CONCAT_(a, b)
// Fills `stub`'s slot for `device` (CPU or CUDA) with `fn` when the library loads.
#define BACKPROP_EXT_REGISTER_KERNEL(stub, device, fn)                       \
  static const bool BACKPROP_EXT_STUB_CONCAT(stub##_registered_, __LINE__) = \
      (::backprop_ext::stub.set(::c10::DeviceType::device, fn), true)

}  // namespace backprop_ext
