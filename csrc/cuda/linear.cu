// kernels.linear / kernels.feed_forward on CUDA. Where cuBLASLt's epilogues match the call (activation None, relu or
// tanh GELU, no dropout; the rule and the layouts are in csrc/cuda/linear_cublaslt.cu), the whole op is one
// cublasLtMatmul. Otherwise the GEMM is cuBLAS through ATen (at::addmm with the bias for the first Linear; at::mm), on
// the current stream, followed by our own epilogue kernels:
//   forward_epilogue_kernel    out = residual + dropout(act(pre)) (gated: act(gate) * up) -- every activation (relu,
//                              erf and tanh GELU, SiLU, SwiGLU, GeGLU), Philox dropout and the residual add;
//   residual_bias_kernel       out = residual + bias, the C operand that addmm_ (beta = 1) accumulates x @ w.T onto,
//                              so the second Linear's bias and residual add cost one pass;
//   backward_epilogue_kernel   grad_pre = act'(pre) * dropout(grad @ w2) with the gated split, and per-row-block
//                              column sums of grad_pre (the bias gradient, summed afterwards: no atomics).
// linear_weight_grad (grad.T @ x with the bias gradient) is cuBLASLt's BGRADB where it serves, else at::mm + a sum.
// The cuBLASLt path is compiled in only when the build found the cuBLAS headers (KERNELS_WITH_CUBLASLT, setup.py).
// Arithmetic in fp32; outputs in the input dtype (fp16, bf16, fp32).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/linear_checks.h>
#ifdef KERNELS_WITH_CUBLASLT
#include <kernels/linear_cublaslt.h>
#endif
#include <kernels/linear_epilogue.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#include <algorithm>

namespace kernels {
namespace {

// The dtypes served on CUDA (fp32, fp16, bf16), without instantiating kernels for fp64.
#define KERNELS_DISPATCH_LINEAR_TYPES(TYPE, NAME, ...)                                               \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                            \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int kThreads = 256;
constexpr int kColumnsPerBlock = 32;  // backward: one warp-wide stripe of columns ...
constexpr int kRowGroups = 8;         // ... with 8 row groups per block
constexpr int kRowsPerBlock = 256;    // ... over this many rows

struct DropoutArgs {
  const int64_t* seed;  // device pointer, read only when enabled
  float p;
  float scale;
  bool enabled;
};

__device__ __forceinline__ float dropout_factor(const DropoutArgs& dropout, uint64_t seed, int64_t row, int64_t col,
                                                int64_t width) {
  const uint32_t counter = static_cast<uint32_t>(static_cast<uint64_t>(row) * width + col);
  return philox_uniform(seed, counter) >= dropout.p ? dropout.scale : 0.0f;
}

template <typename scalar_t>
__global__ void forward_epilogue_kernel(const scalar_t* pre, const scalar_t* __restrict__ residual,
                                        scalar_t* out, int64_t M, int64_t N, int64_t width, Activation activation,
                                        bool gated, DropoutArgs dropout) {
  const uint64_t seed = dropout.enabled ? static_cast<uint64_t>(*dropout.seed) : 0;
  const int64_t total = M * N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t row = i / N, col = i - row * N;
    const scalar_t* gate = pre + row * width;
    float y = activate<float>(static_cast<float>(gate[col]), activation);
    if (gated) y *= static_cast<float>(gate[N + col]);
    if (dropout.enabled) y *= dropout_factor(dropout, seed, row, col, N);
    if (residual != nullptr) y += static_cast<float>(residual[i]);
    out[i] = static_cast<scalar_t>(y);  // `out` may be `pre` (in place, not gated): element i is read before
  }
}

template <typename scalar_t>
__global__ void residual_bias_kernel(const scalar_t* __restrict__ residual, const scalar_t* __restrict__ bias,
                                     scalar_t* __restrict__ out, int64_t M, int64_t N) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < M * N; i += stride) {
    float y = static_cast<float>(residual[i]);
    if (bias != nullptr) y += static_cast<float>(bias[i % N]);
    out[i] = static_cast<scalar_t>(y);
  }
}

// Block (kColumnsPerBlock, kRowGroups) over columns [blockIdx.x * 32, +32) and rows [blockIdx.y * 256, +256): each
// thread walks its column over every kRowGroups-th row, then the block sums its row groups in a fixed order into
// partial[blockIdx.y, col] (and [.., N + col] for the up half when gated).
template <typename scalar_t>
__global__ void backward_epilogue_kernel(const scalar_t* __restrict__ dh, const scalar_t* __restrict__ pre,
                                         scalar_t* __restrict__ grad_pre, float* __restrict__ partial, int64_t M,
                                         int64_t N, int64_t width, Activation activation, bool gated,
                                         DropoutArgs dropout) {
  __shared__ float sums[kRowGroups][kColumnsPerBlock];
  __shared__ float sums_up[kRowGroups][kColumnsPerBlock];
  const uint64_t seed = dropout.enabled ? static_cast<uint64_t>(*dropout.seed) : 0;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColumnsPerBlock + threadIdx.x;
  const int64_t first_row = static_cast<int64_t>(blockIdx.y) * kRowsPerBlock;
  const int64_t last_row = std::min<int64_t>(M, first_row + kRowsPerBlock);
  float sum = 0.0f, sum_up = 0.0f;
  if (col < N) {
    for (int64_t row = first_row + threadIdx.y; row < last_row; row += kRowGroups) {
      float d = static_cast<float>(dh[row * N + col]);
      if (dropout.enabled) d *= dropout_factor(dropout, seed, row, col, N);
      const float x = static_cast<float>(pre[row * width + col]);
      if (gated) {
        // h = act(gate) * up: d gate = d * up * act'(gate), d up = d * act(gate).
        const float d_gate = d * static_cast<float>(pre[row * width + N + col]) * activate_grad<float>(x, activation);
        const float d_up = d * activate<float>(x, activation);
        grad_pre[row * width + col] = static_cast<scalar_t>(d_gate);
        grad_pre[row * width + N + col] = static_cast<scalar_t>(d_up);
        sum += d_gate;
        sum_up += d_up;
      } else {
        const float d_pre = d * activate_grad<float>(x, activation);
        grad_pre[row * width + col] = static_cast<scalar_t>(d_pre);
        sum += d_pre;
      }
    }
  }
  sums[threadIdx.y][threadIdx.x] = sum;
  sums_up[threadIdx.y][threadIdx.x] = sum_up;
  __syncthreads();
  if (threadIdx.y == 0 && col < N) {
    float total = 0.0f, total_up = 0.0f;
#pragma unroll
    for (int g = 0; g < kRowGroups; ++g) {
      total += sums[g][threadIdx.x];
      total_up += sums_up[g][threadIdx.x];
    }
    partial[blockIdx.y * width + col] = total;
    if (gated) partial[blockIdx.y * width + N + col] = total_up;
  }
}

int grid_size(int64_t elements, int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t wanted = (elements + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, static_cast<int64_t>(sms) * 8)));
}

DropoutArgs make_dropout(double p, const at::Tensor& seed, const at::Tensor& like) {
  if (!(p > 0.0)) return {nullptr, 0.0f, 1.0f, false};
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong, "argument `seed` must be a one-element "
                    "int64 tensor, got dtype ", seed.scalar_type(), " and ", seed.numel(), " elements");
  check_same_device(seed, "seed", like, "x");
  return {seed.const_data_ptr<int64_t>(), static_cast<float>(p), static_cast<float>(dropout_scale(p)), true};
}

std::tuple<at::Tensor, at::Tensor> linear_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       std::optional<c10::string_view> activation, double dropout_p,
                                                       const at::Tensor& seed,
                                                       const std::optional<at::Tensor>& residual, bool save_pre) {
  const ActivationSpec spec = parse_activation(activation);
  const at::Tensor res = check_linear_forward(x, weight, bias, residual, spec, {at::kFloat, at::kHalf, at::kBFloat16});
  const int64_t M = x.size(0), width = weight.size(0), N = spec.gated ? width / 2 : width;
  const c10::cuda::CUDAGuard guard(x.device());
  const DropoutArgs dropout = make_dropout(dropout_p, seed, x);
#ifdef KERNELS_WITH_CUBLASLT
  {
    at::Tensor out, pre;
    if (cublaslt_linear_forward(x, weight, bias, spec, dropout.enabled, res, save_pre, out, pre)) return {out, pre};
  }
#endif
  const auto options = x.options().memory_format(at::MemoryFormat::Contiguous);
  const at::Tensor weight_t = weight.t();
  at::Tensor empty_pre = empty_output({0, width}, options);
  auto stream = c10::cuda::getCurrentCUDAStream();

  if (spec.activation == Activation::kNone && !dropout.enabled && !save_pre) {
    if (!res.defined()) {
      return {bias.has_value() ? at::addmm(*bias, x, weight_t) : at::mm(x, weight_t), empty_pre};
    }
    at::Tensor out = empty_output({M, N}, options);
    if (M * N > 0) {
      const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
      KERNELS_DISPATCH_LINEAR_TYPES(x.scalar_type(), "linear_residual_cuda", [&] {
        residual_bias_kernel<scalar_t><<<grid_size(M * N, x.get_device()), kThreads, 0, stream>>>(
            res.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
            out.mutable_data_ptr<scalar_t>(), M, N);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    out.addmm_(x, weight_t);  // out = 1 * out + x @ w.T
    return {out, empty_pre};
  }
  at::Tensor pre = bias.has_value() ? at::addmm(*bias, x, weight_t) : at::mm(x, weight_t);  // (M, width)
  const bool in_place = !spec.gated && !save_pre;
  at::Tensor out = in_place ? pre : empty_output({M, N}, options);
  if (M * N > 0) {
    KERNELS_DISPATCH_LINEAR_TYPES(x.scalar_type(), "linear_forward_cuda", [&] {
      forward_epilogue_kernel<scalar_t><<<grid_size(M * N, x.get_device()), kThreads, 0, stream>>>(
          pre.const_data_ptr<scalar_t>(), res.defined() ? res.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), M, N, width, spec.activation, spec.gated, dropout);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {out, save_pre ? pre : empty_pre};
}

// residual + dropout(act(pre)) (gated: act(gate) * up) for a pre-activation computed elsewhere: the gated block with
// separate gate and up weights (kernels/_ops/feed_forward_native.py writes both GEMMs into the halves of `pre`).
at::Tensor linear_epilogue_cuda(const at::Tensor& pre, std::optional<c10::string_view> activation, double dropout_p,
                                const at::Tensor& seed, const std::optional<at::Tensor>& residual) {
  const ActivationSpec spec = parse_activation(activation);
  const at::Tensor res = check_linear_epilogue(pre, residual, spec, {at::kFloat, at::kHalf, at::kBFloat16});
  const int64_t M = pre.size(0), width = pre.size(1), N = spec.gated ? width / 2 : width;
  const c10::cuda::CUDAGuard guard(pre.device());
  const DropoutArgs dropout = make_dropout(dropout_p, seed, pre);
  const at::Tensor pre_c = pre.contiguous();
  at::Tensor out = empty_output({M, N}, pre.options().memory_format(at::MemoryFormat::Contiguous));
  if (M * N > 0) {
    KERNELS_DISPATCH_LINEAR_TYPES(pre.scalar_type(), "linear_epilogue_cuda", [&] {
      forward_epilogue_kernel<scalar_t><<<grid_size(M * N, pre.get_device()), kThreads, 0,
                                          c10::cuda::getCurrentCUDAStream()>>>(
          pre_c.const_data_ptr<scalar_t>(), res.defined() ? res.const_data_ptr<scalar_t>() : nullptr,
          out.mutable_data_ptr<scalar_t>(), M, N, width, spec.activation, spec.gated, dropout);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> linear_act_backward_cuda(const at::Tensor& grad,
                                                            const std::optional<at::Tensor>& weight,
                                                            const at::Tensor& pre,
                                                            std::optional<c10::string_view> activation,
                                                            double dropout_p, const at::Tensor& seed) {
  check_dim(grad, "grad", 2);
  check_dim(pre, "pre", 2);
  check_dtype(pre, "pre", {at::kFloat, at::kHalf, at::kBFloat16});
  check_same_dtype(grad, "grad", pre, "pre");
  check_same_device(grad, "grad", pre, "pre");
  const c10::cuda::CUDAGuard guard(pre.device());
  const ActivationSpec spec = parse_activation(activation);
  const int64_t M = pre.size(0), width = pre.size(1), N = spec.gated ? width / 2 : width;
#ifdef KERNELS_WITH_CUBLASLT
  {
    at::Tensor grad_pre, grad_bias;
    if (cublaslt_linear_act_backward(grad, weight, pre, spec, dropout_p > 0.0, grad_pre, grad_bias)) {
      return {grad_pre, grad_bias};
    }
  }
#endif
  at::Tensor dh;  // gradient of the activation's (dropped-out) output, (M, N)
  if (weight.has_value()) {
    check_same_dtype(*weight, "weight", pre, "pre");
    dh = at::mm(grad, *weight);
  } else {
    dh = grad.contiguous();
  }
  TORCH_CHECK_VALUE(dh.size(0) == M && dh.size(1) == N, "argument `grad` gives an activation gradient of shape ",
                    dh.sizes(), "; expected (", M, ", ", N, ") for `pre` of shape ", pre.sizes());
  const DropoutArgs dropout = make_dropout(dropout_p, seed, pre);
  const at::Tensor pre_c = pre.contiguous();
  at::Tensor grad_pre = empty_output(pre.sizes(), pre.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t row_blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor partial = at::zeros({std::max<int64_t>(row_blocks, 1), width}, pre.options().dtype(at::kFloat));
  if (M > 0 && N > 0) {
    const dim3 grid(static_cast<unsigned>((N + kColumnsPerBlock - 1) / kColumnsPerBlock),
                    static_cast<unsigned>(row_blocks));
    const dim3 block(kColumnsPerBlock, kRowGroups);
    auto stream = c10::cuda::getCurrentCUDAStream();
    KERNELS_DISPATCH_LINEAR_TYPES(pre.scalar_type(), "linear_act_backward_cuda", [&] {
      backward_epilogue_kernel<scalar_t><<<grid, block, 0, stream>>>(
          dh.const_data_ptr<scalar_t>(), pre_c.const_data_ptr<scalar_t>(), grad_pre.mutable_data_ptr<scalar_t>(),
          partial.mutable_data_ptr<float>(), M, N, width, spec.activation, spec.gated, dropout);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_pre, partial.sum(0)};
}

// grad.T @ x and, with `bias`, the column sums of grad: cuBLASLt's BGRADB epilogue reduces them in the GEMM.
std::tuple<at::Tensor, at::Tensor> linear_weight_grad_cuda(const at::Tensor& grad, const at::Tensor& x, bool bias) {
  const c10::cuda::CUDAGuard guard(x.device());
#ifdef KERNELS_WITH_CUBLASLT
  {
    at::Tensor grad_weight, grad_bias;
    if (bias && grad.dim() == 2 && x.dim() == 2 && grad.scalar_type() == x.scalar_type() &&
        grad.device() == x.device() && grad.size(0) == x.size(0) &&
        cublaslt_linear_weight_grad(grad, x, grad_weight, grad_bias)) {
      return {grad_weight, grad_bias};
    }
  }
#endif
  return linear_weight_grad_mm(grad, x, bias);  // checks the arguments
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("linear_forward", &linear_forward_cuda);
  m.impl("linear_act_backward", &linear_act_backward_cuda);
  m.impl("linear_epilogue", &linear_epilogue_cuda);
  m.impl("linear_weight_grad", &linear_weight_grad_cuda);
}

}  // namespace kernels
