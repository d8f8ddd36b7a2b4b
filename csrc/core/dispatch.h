// The one dtype dispatch of the project: the four float types, named after the op so that an
// unsupported dtype reports which op refused it.
#pragma once

#include <ATen/Dispatch.h>

#define BACKPROP_EXT_DISPATCH_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)
