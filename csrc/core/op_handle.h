// An op of this library called through the dispatcher, from another op: a composite op calling
// its parts, an autocast kernel calling the op it wraps. Callers keep the handle in a static.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace backprop_ext {

// The op `name` ("backprop_ext::<op>"), typed by its C++ signature.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").template typed<Signature>();
}

}  // namespace backprop_ext
