// The argument checks of layer_norm_forward / layer_norm_backward shared by the CPU and CUDA kernels
// (csrc/cpu/layer_norm.cpp, csrc/cuda/layer_norm.cu), on rows x (M, N).
#pragma once

#include <ATen/ATen.h>

#include <kernels/checks.h>

namespace kernels {

// An optional tensor that must match `x` in dtype, device and shape (residual, dy, dh).
inline void check_row_like(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                           const char* x_name) {
  if (!t.has_value()) return;
  check_same_dtype(*t, name, x, x_name);
  check_same_device(*t, name, x, x_name);
  check_same_shape(*t, name, x, x_name);
}

// An optional (N,) parameter (weight, bias) of x's dtype and device.
inline void check_parameter(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value()) return;
  check_same_dtype(*t, name, x, "x");
  check_same_device(*t, name, x, "x");
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(1), "argument `", name, "` has shape ", t->sizes(),
                    "; expected (", x.size(1), ",) (the normalised size of `x`)");
}

}  // namespace kernels
