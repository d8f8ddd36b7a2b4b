// Run-time choice between the builds of csrc/cpu/*_kernels.cpp (see setup.py): the same choice
// ATen makes for its own kernels, so ATEN_CPU_CAPABILITY=default|avx2|avx512 steers ours too.
#pragma once

#include <ATen/Version.h>

#include <string>

namespace backprop_ext::cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

inline Isa current_isa() {
  static const Isa isa = [] {
    const std::string cap = at::get_cpu_capability();
#if defined(BACKPROP_EXT_HAVE_ISA_AVX512)
    if (cap == "AVX512") return Isa::kAvx512;
#endif
#if defined(BACKPROP_EXT_HAVE_ISA_AVX2)
    if (cap == "AVX512" || cap == "AVX2") return Isa::kAvx2;
#endif
    return Isa::kDefault;
  }();
  return isa;
}

// Declares `name` in each ISA namespace compiled into this build and defines `pick_<name>()`
// returning the best one's address.
#define BACKPROP_EXT_ISA_FN_DEFAULT(name, sig) \
  namespace DEFAULT {                          \
  sig;                                         \
  }
#if defined(BACKPROP_EXT_HAVE_ISA_AVX2)
#define BACKPROP_EXT_ISA_FN_AVX2(name, sig) \
  namespace AVX2 {                          \
  sig;                                      \
  }
#define BACKPROP_EXT_ISA_CASE_AVX2(name) \
  if (isa == Isa::kAvx2) return &AVX2::name;
#else
#define BACKPROP_EXT_ISA_FN_AVX2(name, sig)
#define BACKPROP_EXT_ISA_CASE_AVX2(name)
#endif
#if defined(BACKPROP_EXT_HAVE_ISA_AVX512)
#define BACKPROP_EXT_ISA_FN_AVX512(name, sig) \
  namespace AVX512 {                          \
  sig;                                        \
  }
#define BACKPROP_EXT_ISA_CASE_AVX512(name) \
  if (isa == Isa::kAvx512) return &AVX512::name;
#else
#define BACKPROP_EXT_ISA_FN_AVX512(name, sig)
#define BACKPROP_EXT_ISA_CASE_AVX512(name)
#endif

#define BACKPROP_EXT_DECLARE_ISA_KERNEL(name, sig)  \
  BACKPROP_EXT_ISA_FN_DEFAULT(name, sig)            \
  BACKPROP_EXT_ISA_FN_AVX2(name, sig)               \
  BACKPROP_EXT_ISA_FN_AVX512(name, sig)             \
  inline decltype(&DEFAULT::name) pick_##name() {   \
    [[maybe_unused]] const Isa isa = current_isa(); \
    BACKPROP_EXT_ISA_CASE_AVX512(name)              \
    BACKPROP_EXT_ISA_CASE_AVX2(name)                \
    return &DEFAULT::name;                          \
  }

}  // namespace backprop_ext::cpu
