// Layer norm and RMS norm on CUDA, with the fused residual add ("Add & Norm"), forward and backward.
//
// Layout: x, residual, y, h, dy, dh, dx are (M, N) rows, contiguous; weight and bias (N,); fp32 mean and rstd (M,)
// (mean empty for RMS norm, which is layer norm with the mean fixed at 0). fp16, bf16 and fp32 in, fp32 arithmetic.
//
// The kernels (one block per row forward; row groups and a second, in-order reduction backward) and what they hold
// per thread are in layer_norm_kernels.cuh; this file plans a row's cut among threads, checks the arguments, launches
// and registers the ops.
//
// Only c10's CUDA headers are used (not ATen/cuda/CUDAContext.h), so the file compiles wherever nvcc does.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/layer_norm.h>
#include <kernels/outputs.h>

#include "layer_norm_kernels.cuh"

#include <algorithm>
#include <tuple>

namespace kernels {
namespace {

// fp32, fp16 and bf16 (the dtypes served on CUDA; fp64 is rejected by the checks before dispatch).
#define KERNELS_DISPATCH_CUDA_FLOATING_TYPES(TYPE, NAME, ...)                                  \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                    \
                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

// How a row is cut among threads: packs of kVec elements (16 bytes, or 1 element when the row or a pointer does not
// allow 16-byte packs), `packs` packs per thread held in registers (0: looped), `threads` per block.
struct RowPlan {
  bool vectorised;
  int packs;
  int threads;
};

RowPlan plan_row(int64_t n, int vec, bool aligned, int max_packs) {
  const bool vectorised = aligned && n % vec == 0;
  const int64_t row_packs = vectorised ? n / vec : n;
  if (vectorised) {
    for (int packs = 1; packs <= max_packs; packs *= 2) {
      const int64_t threads = (row_packs + packs - 1) / packs;
      if (threads <= kMaxThreads) {
        return {true, packs, static_cast<int>(std::max<int64_t>(32, (threads + 31) / 32 * 32))};
      }
    }
  }
  const int64_t threads = std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, (row_packs + 31) / 32 * 32));
  return {vectorised, 0, static_cast<int>(threads)};
}

bool aligned16(const at::Tensor& t) {
  return !t.defined() || t.numel() == 0 || reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
}

// Calls launcher.template run<kVec, kPacks>() for the plan's compile-time configuration (kPacks = 0: looped).
template <int kVec, typename Launcher>
void with_plan(const RowPlan& plan, const Launcher& launcher) {
  if (!plan.vectorised) {
    launcher.template run<1, 0>();
    return;
  }
  switch (plan.packs) {
    case 1: launcher.template run<kVec, 1>(); break;
    case 2: launcher.template run<kVec, 2>(); break;
    case 4: launcher.template run<kVec, 4>(); break;
    case 8: launcher.template run<kVec, 8>(); break;
    default: launcher.template run<kVec, 0>(); break;
  }
}

template <typename scalar_t>
struct ForwardLauncher {
  const scalar_t *x, *residual, *weight, *bias;
  scalar_t *y, *h;
  float *mean, *rstd;
  int64_t m, n;
  float eps;
  int threads;
  cudaStream_t stream;

  template <int kVec, int kPacks>
  void run() const {
    if constexpr (kPacks <= kMaxForwardPacks) {
      layer_norm_forward_kernel<scalar_t, kVec, kPacks><<<m, threads, 0, stream>>>(x, residual, weight, bias, y, h,
                                                                                    mean, rstd, n, eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

template <typename scalar_t>
struct BackwardLauncher {
  const scalar_t *dy, *dh, *h, *weight;
  const float *mean, *rstd;
  scalar_t* dx;
  float *partial_dw, *partial_db;
  int64_t m, n, groups, rows_per_block;
  int threads;
  cudaStream_t stream;

  template <int kVec, int kPacks>
  void run() const {
    if constexpr (kPacks <= kMaxBackwardPacks) {  // larger ones are never planned for the backward
      layer_norm_backward_kernel<scalar_t, kVec, kPacks><<<groups, threads, 0, stream>>>(
          dy, dh, h, weight, mean, rstd, dx, partial_dw, partial_db, m, n, rows_per_block);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

// The row dtypes the CUDA kernels serve.
const RowDtypes kRowDtypes = {at::kFloat, at::kHalf, at::kBFloat16};

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

template <typename scalar_t>
const scalar_t* pointer_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, bool rms) {
  check_forward_arguments(x, residual, weight, bias, kRowDtypes);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0), n = x.size(1);
  const at::Tensor xc = x.contiguous(), rc = contiguous_or_undefined(residual);
  const at::Tensor wc = contiguous_or_undefined(weight), bc = contiguous_or_undefined(bias);
  at::Tensor y = empty_output_like(xc);
  at::Tensor h = residual.has_value() ? empty_output_like(xc) : at::empty({0}, x.options());
  at::Tensor mean = empty_output({rms ? 0 : m}, x.options().dtype(at::kFloat));
  at::Tensor rstd = empty_output({m}, x.options().dtype(at::kFloat));
  if (x.numel() == 0) return {y, h, mean, rstd};
  const bool aligned = aligned16(xc) && aligned16(rc) && aligned16(wc) && aligned16(bc) && aligned16(y) &&
                       aligned16(h);
  auto stream = c10::cuda::getCurrentCUDAStream();
  KERNELS_DISPATCH_CUDA_FLOATING_TYPES(x.scalar_type(), "layer_norm_forward_cuda", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const RowPlan plan = plan_row(n, kVec, aligned, kMaxForwardPacks);
    const ForwardLauncher<scalar_t> launcher{
        xc.const_data_ptr<scalar_t>(), pointer_or_null<scalar_t>(rc), pointer_or_null<scalar_t>(wc),
        pointer_or_null<scalar_t>(bc), y.mutable_data_ptr<scalar_t>(),
        residual.has_value() ? h.mutable_data_ptr<scalar_t>() : nullptr,
        rms ? nullptr : mean.mutable_data_ptr<float>(), rstd.mutable_data_ptr<float>(), m, n,
        static_cast<float>(eps), plan.threads, stream};
    with_plan<kVec>(plan, launcher);
  });
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(
    const at::Tensor& dy, const c10::optional<at::Tensor>& dh, const at::Tensor& h, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight, bool has_bias, bool rms) {
  check_backward_arguments(dy, dh, h, mean, rstd, weight, rms, kRowDtypes, at::kFloat);
  const int64_t m = h.size(0), n = h.size(1);
  const c10::cuda::CUDAGuard guard(h.device());
  const at::Tensor dyc = dy.contiguous(), hc = h.contiguous(), dhc = contiguous_or_undefined(dh);
  const at::Tensor wc = contiguous_or_undefined(weight), meanc = mean.contiguous(), rstdc = rstd.contiguous();
  at::Tensor dx = empty_output_like(hc);
  const at::ScalarType param_dtype = weight.has_value() ? weight->scalar_type() : h.scalar_type();
  at::Tensor dweight = at::empty({weight.has_value() ? n : 0}, h.options().dtype(param_dtype));
  at::Tensor dbias = at::empty({has_bias ? n : 0}, h.options().dtype(param_dtype));
  if (m == 0 || n == 0) {
    dweight.zero_();
    dbias.zero_();
    return {dx, dweight, dbias};
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, h.get_device()));
  const bool aligned = aligned16(dyc) && aligned16(hc) && aligned16(dhc) && aligned16(wc) && aligned16(dx);
  auto stream = c10::cuda::getCurrentCUDAStream();
  KERNELS_DISPATCH_CUDA_FLOATING_TYPES(h.scalar_type(), "layer_norm_backward_cuda", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const RowPlan plan = plan_row(n, kVec, aligned, kMaxBackwardPacks);
    // Enough row groups to fill every SM with about 2048 threads; each writes one row of partial sums.
    const int64_t wanted = std::min<int64_t>(m, static_cast<int64_t>(sms) * std::max(1, 2048 / plan.threads));
    const int64_t rows_per_block = (m + wanted - 1) / wanted;
    const int64_t groups = (m + rows_per_block - 1) / rows_per_block;
    at::Tensor partial_dw = empty_output({groups, n}, h.options().dtype(at::kFloat));
    at::Tensor partial_db = empty_output({groups, n}, h.options().dtype(at::kFloat));
    const BackwardLauncher<scalar_t> launcher{
        dyc.const_data_ptr<scalar_t>(), pointer_or_null<scalar_t>(dhc), hc.const_data_ptr<scalar_t>(),
        pointer_or_null<scalar_t>(wc), rms ? nullptr : meanc.const_data_ptr<float>(), rstdc.const_data_ptr<float>(),
        dx.mutable_data_ptr<scalar_t>(), partial_dw.mutable_data_ptr<float>(), partial_db.mutable_data_ptr<float>(),
        m, n, groups, rows_per_block, plan.threads, stream};
    with_plan<kVec>(plan, launcher);
    const int blocks = static_cast<int>((n + 255) / 256);
    if (weight.has_value()) {
      sum_partials_kernel<scalar_t><<<blocks, 256, 0, stream>>>(partial_dw.const_data_ptr<float>(),
                                                                  dweight.mutable_data_ptr<scalar_t>(), groups, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (has_bias) {
      sum_partials_kernel<scalar_t><<<blocks, 256, 0, stream>>>(partial_db.const_data_ptr<float>(),
                                                                  dbias.mutable_data_ptr<scalar_t>(), groups, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_cuda);
  m.impl("layer_norm_backward", &layer_norm_backward_cuda);
}

}  // namespace kernels
