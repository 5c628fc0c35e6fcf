// residual_add on CUDA: out = x + residual. Vectorised 16-byte loads where the pointers allow it, fp32 arithmetic,
// a grid-stride loop, launched on the current stream under a device guard. Only c10's CUDA headers are used (not
// ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers), so it compiles wherever nvcc does.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>

namespace kernels {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(scalar_t);
  scalar_t v[kSize];
};

template <typename scalar_t>
__global__ void residual_add_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ residual,
                                    scalar_t* __restrict__ out, int64_t n, bool vectorised) {
  using acc_t = at::opmath_type<scalar_t>;
  using pack_t = Pack<scalar_t>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vectorised) {
    const int64_t packs = n / pack_t::kSize;
    const pack_t* xp = reinterpret_cast<const pack_t*>(x);
    const pack_t* rp = reinterpret_cast<const pack_t*>(residual);
    pack_t* op = reinterpret_cast<pack_t*>(out);
    for (int64_t i = first; i < packs; i += stride) {
      pack_t a = xp[i], b = rp[i], c;
#pragma unroll
      for (int j = 0; j < pack_t::kSize; ++j) {
        c.v[j] = static_cast<scalar_t>(static_cast<acc_t>(a.v[j]) + static_cast<acc_t>(b.v[j]));
      }
      op[i] = c;
    }
    done = packs * pack_t::kSize;
  }
  for (int64_t i = done + first; i < n; i += stride) {
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) + static_cast<acc_t>(residual[i]));
  }
}

at::Tensor residual_add_cuda(const at::Tensor& x, const at::Tensor& residual) {
  check_dtype(x, "x", {at::kFloat, at::kHalf, at::kBFloat16});
  check_same_dtype(residual, "residual", x, "x");
  check_same_device(residual, "residual", x, "x");
  check_same_shape(residual, "residual", x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor a = x.contiguous();
  const at::Tensor b = residual.contiguous();
  at::Tensor out = empty_output_like(a);
  const int64_t n = a.numel();
  if (n == 0) return out;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  const int64_t wanted = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<int64_t>(wanted, static_cast<int64_t>(sms) * 8));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "residual_add_cuda", [&] {
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool vectorised = aligned(a.const_data_ptr()) && aligned(b.const_data_ptr()) && aligned(out.data_ptr());
    residual_add_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, vectorised);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) { m.impl("residual_add", &residual_add_cuda); }

}  // namespace kernels
