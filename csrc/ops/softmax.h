// The softmax family's shapes and kernel stubs (see stub.h): csrc/ops/softmax.cpp holds the ops,
// which check their arguments, lay tensors out and allocate, then call these; cpu/softmax.cpp and
// cuda/softmax.cu register the kernels. Math: softmax_math.h. Cross-entropy: cross_entropy.h.
//
// Kernels get contiguous tensors of one float dtype, never empty ones. A reduction over one dim
// sees its tensor as (outer, D, inner): D the reduced length, inner == 1 for the last dim.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "core/stub.h"

namespace backprop_ext {

struct ReductionShape {
  int64_t dim, outer, D, inner;
};

// y = softmax(x) (or log_softmax when log) along D.
using softmax_fwd_fn = void (*)(const at::Tensor& x, at::Tensor& y, const ReductionShape& s,
                                bool log);
// gx from grad g and the forward's output y.
using softmax_bwd_fn = void (*)(const at::Tensor& g, const at::Tensor& y, at::Tensor& gx,
                                const ReductionShape& s, bool log);
// out (outer, inner) = logsumexp(x) along D.
using logsumexp_fwd_fn = void (*)(const at::Tensor& x, at::Tensor& out, const ReductionShape& s);
// gx = g exp(x - result), g and result (outer, inner) broadcast along D.
using logsumexp_bwd_fn = void (*)(const at::Tensor& g, const at::Tensor& x,
                                  const at::Tensor& result, at::Tensor& gx,
                                  const ReductionShape& s);

// softmax_fwd's C++ signature, for calls through the dispatcher (core/op_handle.h).
using SoftmaxFwd = at::Tensor(const at::Tensor&, int64_t, bool);

BACKPROP_EXT_DECLARE_STUB(softmax_fwd_stub, softmax_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(softmax_bwd_stub, softmax_bwd_fn);
BACKPROP_EXT_DECLARE_STUB(logsumexp_fwd_stub, logsumexp_fwd_fn);
BACKPROP_EXT_DECLARE_STUB(logsumexp_bwd_stub, logsumexp_bwd_fn);

}  // namespace backprop_ext
