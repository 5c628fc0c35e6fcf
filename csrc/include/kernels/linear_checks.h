// The argument checks of linear_forward (and linear_weight_grad), shared by the CPU and CUDA kernels (csrc/cpu/linear.cpp,
// csrc/cuda/linear.cu) so both report a bad input in the same words.
#pragma once

#include <ATen/ATen.h>

#include <ATen/OpMathType.h>

#include <initializer_list>
#include <optional>
#include <tuple>

#include <kernels/checks.h>
#include <kernels/linear_epilogue.h>

namespace kernels {

// Checks residual (M, N) against `like` (dtype, device); returns it made contiguous (undefined when absent).
inline at::Tensor check_linear_residual(const std::optional<at::Tensor>& residual, const at::Tensor& like,
                                        const char* like_name, int64_t M, int64_t N) {
  if (!residual.has_value()) return at::Tensor();
  check_same_dtype(*residual, "residual", like, like_name);
  check_same_device(*residual, "residual", like, like_name);
  TORCH_CHECK_VALUE(residual->dim() == 2 && residual->size(0) == M && residual->size(1) == N,
                    "argument `residual` has shape ", residual->sizes(), "; expected (", M, ", ", N, ")");
  return residual->contiguous();
}

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
  return check_linear_residual(residual, x, "x", M, N);
}

// Checks pre (M, width) and residual (M, N) of linear_epilogue, N = width or width / 2 for a gated activation;
// returns the residual made contiguous (undefined when absent).
inline at::Tensor check_linear_epilogue(const at::Tensor& pre, const std::optional<at::Tensor>& residual,
                                        const ActivationSpec& spec, std::initializer_list<at::ScalarType> dtypes) {
  check_dim(pre, "pre", 2);
  check_dtype(pre, "pre", dtypes);
  const int64_t width = pre.size(1);
  TORCH_CHECK_VALUE(!spec.gated || width % 2 == 0, "argument `pre` has ", width, " columns; a gated activation "
                    "packs [gate, up] and needs an even number");
  return check_linear_residual(residual, pre, "pre", pre.size(0), spec.gated ? width / 2 : width);
}

// linear_weight_grad's checks (grad (M, N), x (M, K), same dtype and device) and its plain computation: an ATen GEMM
// and a column sum (the CPU kernel, and the CUDA kernel where cuBLASLt does not serve).
inline std::tuple<at::Tensor, at::Tensor> linear_weight_grad_mm(const at::Tensor& grad, const at::Tensor& x,
                                                                bool bias) {
  check_dim(grad, "grad", 2);
  check_dim(x, "x", 2);
  check_same_dtype(grad, "grad", x, "x");
  check_same_device(grad, "grad", x, "x");
  TORCH_CHECK_VALUE(grad.size(0) == x.size(0), "argument `grad` has shape ", grad.sizes(), "; expected (",
                    x.size(0), ", out_features) (one row per row of `x`)");
  const at::ScalarType sum_type = at::toOpMathType(grad.scalar_type());
  return {at::mm(grad.t(), x),
          bias ? grad.sum(0, /*keepdim=*/false, sum_type) : at::empty({0}, grad.options().dtype(sum_type))};
}

}  // namespace kernels
