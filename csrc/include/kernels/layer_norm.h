// The argument checks of layer_norm_forward / layer_norm_backward shared by the CPU and CUDA kernels
// (csrc/cpu/layer_norm.cpp, csrc/cuda/layer_norm.cu), on rows x (M, N).
#pragma once

#include <ATen/ATen.h>

#include <kernels/checks.h>

#include <initializer_list>

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

// Rows (M, N) in one of the dtypes the device's kernels serve.
using RowDtypes = std::initializer_list<at::ScalarType>;

inline void check_rows(const at::Tensor& x, const char* name, RowDtypes dtypes) {
  check_dim(x, name, 2);
  check_dtype(x, name, dtypes);
}

// layer_norm_forward's arguments: rows x (M, N), a residual like x, (N,) weight and bias.
inline void check_forward_arguments(const at::Tensor& x, const c10::optional<at::Tensor>& residual,
                                    const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
                                    RowDtypes dtypes) {
  check_rows(x, "x", dtypes);
  check_row_like(residual, "residual", x, "x");
  check_parameter(weight, "weight", x);
  check_parameter(bias, "bias", x);
}

// layer_norm_backward's arguments: dy and dh like the rows h (M, N), an (N,) weight, and the forward's statistics
// mean and rstd, (M,) each in `statistics` (the kernel's accumulation type); mean is not read for RMS norm.
inline void check_backward_arguments(const at::Tensor& dy, const c10::optional<at::Tensor>& dh, const at::Tensor& h,
                                     const at::Tensor& mean, const at::Tensor& rstd,
                                     const c10::optional<at::Tensor>& weight, bool rms, RowDtypes dtypes,
                                     at::ScalarType statistics) {
  check_rows(h, "h", dtypes);
  check_row_like(dy, "dy", h, "h");
  check_row_like(dh, "dh", h, "h");
  check_parameter(weight, "weight", h);
  const int64_t m = h.size(0);
  TORCH_CHECK_VALUE(rstd.scalar_type() == statistics && rstd.numel() == m, "argument `rstd` must be (", m, ",) ",
                    statistics);
  TORCH_CHECK_VALUE(rms || (mean.scalar_type() == statistics && mean.numel() == m), "argument `mean` must be (", m,
                    ",) ", statistics);
}

}  // namespace kernels
