// The cuBLASLt path of linear_forward, linear_act_backward and linear_weight_grad on CUDA
// (csrc/cuda/linear_cublaslt.cu), compiled only when the build found the cuBLASLt headers and library (setup.py
// defines KERNELS_WITH_CUBLASLT). Each function returns false, having written nothing, when the call is not one that
// cuBLASLt's epilogues fuse (or the shapes and alignment do not fit, or cuBLASLt has no algorithm for it): the caller
// then takes its generic path (csrc/cuda/linear.cu).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include <kernels/linear_epilogue.h>

namespace kernels {

// out = act(x @ weight.T + bias) (+ residual), and pre = x @ weight.T + bias when save_pre (else an empty (0, N)
// tensor), with the arguments checked as by check_linear_forward; `residual` contiguous or undefined. The caller holds
// a device guard for x's device.
bool cublaslt_linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const ActivationSpec& spec, bool dropout, const at::Tensor& residual, bool save_pre,
                             at::Tensor& out, at::Tensor& pre);

// grad_pre = act'(pre) * (grad @ weight) and grad_bias = its column sums (fp32), the contract of linear_act_backward.
bool cublaslt_linear_act_backward(const at::Tensor& grad, const std::optional<at::Tensor>& weight,
                                  const at::Tensor& pre, const ActivationSpec& spec, bool dropout, at::Tensor& grad_pre,
                                  at::Tensor& grad_bias);

// grad_weight = grad.T @ x and grad_bias = the column sums of grad (fp32), the contract of linear_weight_grad with
// bias = true; grad (M, N) and x (M, K) of one dtype and device.
bool cublaslt_linear_weight_grad(const at::Tensor& grad, const at::Tensor& x, at::Tensor& grad_weight,
                                 at::Tensor& grad_bias);

// How many cublasLtMatmul calls this process has made (kernels._C.cublaslt_calls(), for tests).
int64_t cublaslt_calls();

}  // namespace kernels
