// Output allocation shared by every C++ kernel. With KERNELS_POISON_OUTPUTS=1 in the environment (the test suite
// sets it), floating outputs are filled with NaN before a kernel writes them, so an element a kernel forgets to
// write fails every comparison instead of passing by luck.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <limits>

namespace kernels {

inline bool poison_outputs() {
  static const bool enabled = [] {
    const char* value = std::getenv("KERNELS_POISON_OUTPUTS");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs() && at::isFloatingType(out.scalar_type())) {
    out.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return out;
}

inline at::Tensor empty_output_like(const at::Tensor& like) {
  return empty_output(like.sizes(), like.options().memory_format(at::MemoryFormat::Contiguous));
}

}  // namespace kernels
