// The argument checks of linear_forward, shared by the CPU and CUDA kernels (csrc/cpu/linear.cpp,
// csrc/cuda/linear.cu) so both report a bad input in the same words.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>

#include <kernels/checks.h>
#include <kernels/linear_epilogue.h>

namespace kernels {

// Checks x (M, K), weight (width, K), bias (width,) and residual (M, N) with N = width, or width / 2 for a gated
// activation; returns the residual made contiguous (undefined when absent).
inline at::Tensor check_linear_forward(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias,
                                       const std::optional<at::Tensor>& residual, const ActivationSpec& spec,
                                       std::initializer_list<at::ScalarType> dtypes) {
  check_dim(x, "x", 2);
  check_dim(weight, "weight", 2);
  check_dtype(x, "x", dtypes);
  check_same_dtype(weight, "weight", x, "x");
  check_same_device(weight, "weight", x, "x");
  TORCH_CHECK_VALUE(weight.size(1) == x.size(1), "argument `weight` has shape ", weight.sizes(), "; expected (",
                    "out_features, ", x.size(1), ")");
  const int64_t M = x.size(0), width = weight.size(0), N = spec.gated ? width / 2 : width;
  TORCH_CHECK_VALUE(!spec.gated || width % 2 == 0, "argument `weight` has ", width, " rows; a gated activation "
                    "packs [gate; up] and needs an even number");
  if (bias.has_value()) {
    check_same_dtype(*bias, "bias", x, "x");
    check_same_device(*bias, "bias", x, "x");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == width, "argument `bias` has shape ", bias->sizes(),
                      "; expected (", width, ")");
  }
  if (!residual.has_value()) return at::Tensor();
  check_same_dtype(*residual, "residual", x, "x");
  check_same_device(*residual, "residual", x, "x");
  TORCH_CHECK_VALUE(residual->dim() == 2 && residual->size(0) == M && residual->size(1) == N,
                    "argument `residual` has shape ", residual->sizes(), "; expected (", M, ", ", N, ")");
  return residual->contiguous();
}

}  // namespace kernels
