// masked_softmax on CUDA: y = softmax(scale * x + mask) over the last dimension, and its backward
// dx = scale * y * (dy - sum(dy * y)). Loads in the input dtype, fp32 arithmetic, stores in the input dtype.
//
// Three shapes of kernel, picked by the row length Sk:
//  * Sk <= 1024: one warp per row, the row in registers (kElems per lane), warp-shuffle reductions, several rows per
//    block;
//  * Sk <= 16384: one block of 512 threads per row, the row in registers, block reductions through shared memory;
//  * longer rows: one block per row, looped: an online max/sum pass, then a writing pass (the row is read twice).
// Lane `t` of a row handles columns t, t + T, t + 2T, ... (T threads per row), so every warp load is coalesced.
// The mask is read through its broadcast strides (MaskIndexer, csrc/include/kernels/masked_softmax.h); causal rows
// treat columns j > q as masked. Fully masked rows give zeros.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>

#include <kernels/checks.h>
#include <kernels/masked_softmax.h>
#include <kernels/outputs.h>

namespace kernels {
namespace {

using masked_softmax::MaskIndexer;
using masked_softmax::MaskKind;

// fp32, fp16, bf16 (no fp64 instantiations).
#define DISPATCH_CUDA_DTYPES(TYPE, NAME, ...)                               \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

constexpr int kWarp = 32;
constexpr int kBlockThreads = 512;  // threads per row in the block-per-row kernels
constexpr int kWarpRowsPerBlock = 4;  // rows per block in the warp-per-row kernels (128 threads)
constexpr int kWarpMaxCols = 1024;
constexpr int kBlockMaxCols = 16384;

struct MaxOp {
  static constexpr float kIdentity = -INFINITY;
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  static constexpr float kIdentity = 0.0f;
  __device__ float operator()(float a, float b) const { return a + b; }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Reduction over the kThreads threads of one row: a warp (shuffles only) or the whole block (shuffles, then one
// value per warp through shared memory). `scratch` holds kThreads / 32 floats; every thread gets the result.
template <int kThreads, typename Op>
__device__ __forceinline__ float row_reduce(float v, Op op, float* scratch) {
  v = warp_reduce(v, op);
  if constexpr (kThreads > kWarp) {
    constexpr int kWarps = kThreads / kWarp;
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();  // scratch may still be read by the previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < kWarps ? scratch[lane] : Op::kIdentity;
    v = warp_reduce(v, op);
  }
  return v;
}

// fp32 score of column j of a row: scale * x + mask, -inf where masked (bool mask, a -inf additive value, causal
// limit, outside the row) whatever x is.
template <typename scalar_t, MaskKind kKind>
__device__ __forceinline__ float score(const scalar_t* __restrict__ x, const void* __restrict__ mask_row,
                                       int64_t stride_k, int j, int n, float scale) {
  if (j >= n) return -INFINITY;
  float s = scale * static_cast<float>(x[j]);
  if constexpr (kKind == MaskKind::kBool) {
    if (!static_cast<const bool*>(mask_row)[j * stride_k]) s = -INFINITY;
  } else if constexpr (kKind == MaskKind::kAdditive) {
    const float add = static_cast<float>(static_cast<const scalar_t*>(mask_row)[j * stride_k]);
    s = add == -INFINITY ? -INFINITY : s + add;  // a -inf hides the position (a NaN score there does not count)
  }
  return s;
}

// Row in registers: kThreads threads per row, kElems columns per thread (kThreads * kElems >= Sk).
template <typename scalar_t, MaskKind kKind, int kThreads, int kElems>
__global__ void __launch_bounds__(kThreads == kWarp ? kWarp * kWarpRowsPerBlock : kThreads)
forward_registers(const scalar_t* __restrict__ x, const void* __restrict__ mask, scalar_t* __restrict__ y,
                  MaskIndexer indexer, int64_t rows, int sk, float scale, bool is_causal) {
  __shared__ float scratch[kThreads / kWarp];
  const int rows_per_block = blockDim.x / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / kThreads;
  if (row >= rows) return;  // whole warps (warp kernel) or the whole block (block kernel, one row per block)
  const int lane = threadIdx.x % kThreads;
  const int n = is_causal ? static_cast<int>(::min(static_cast<int64_t>(sk), row % indexer.sq + 1)) : sk;
  const scalar_t* xr = x + row * sk;
  const void* mask_row = nullptr;
  if constexpr (kKind != MaskKind::kNone) {
    const int64_t offset = indexer.row_offset(row);
    mask_row = kKind == MaskKind::kBool ? static_cast<const void*>(static_cast<const bool*>(mask) + offset)
                                        : static_cast<const void*>(static_cast<const scalar_t*>(mask) + offset);
  }
  float s[kElems];
  float max = -INFINITY;
#pragma unroll
  for (int i = 0; i < kElems; ++i) {
    s[i] = score<scalar_t, kKind>(xr, mask_row, indexer.stride_k, lane + i * kThreads, n, scale);
    max = fmaxf(max, s[i]);
  }
  max = row_reduce<kThreads>(max, MaxOp(), scratch);
  if (max == -INFINITY) max = 0.0f;  // fully masked row: every exp is 0
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kElems; ++i) {
    s[i] = __expf(s[i] - max);
    sum += s[i];
  }
  sum = row_reduce<kThreads>(sum, SumOp(), scratch);
  // Zeros, not NaN, for a fully masked row (sum = 0). A NaN or +inf kept score makes the sum NaN (fmaxf drops a NaN
  // from the max, but __expf(nan - max) and __expf(inf - inf) are NaN) and `sum != 0` keeps it: an all-NaN row, as
  // torch.softmax (`sum > 0` is false for NaN).
  const float inv = sum != 0.0f ? 1.0f / sum : 0.0f;
  scalar_t* yr = y + row * sk;
#pragma unroll
  for (int i = 0; i < kElems; ++i) {
    const int j = lane + i * kThreads;
    if (j < sk) yr[j] = static_cast<scalar_t>(s[i] * inv);
  }
}

// Long rows: one block per row; pass 1 keeps a running (max, sum of exp(s - max)) per thread, merged over the block;
// pass 2 recomputes the scores and writes.
template <typename scalar_t, MaskKind kKind>
__global__ void __launch_bounds__(kBlockThreads)
forward_looped(const scalar_t* __restrict__ x, const void* __restrict__ mask, scalar_t* __restrict__ y,
               MaskIndexer indexer, int64_t rows, int64_t sk, float scale, bool is_causal) {
  __shared__ float scratch[kBlockThreads / kWarp];
  const int64_t row = blockIdx.x;
  const int n = static_cast<int>(is_causal ? ::min(sk, row % indexer.sq + 1) : sk);
  const scalar_t* xr = x + row * sk;
  const void* mask_row = nullptr;
  if constexpr (kKind != MaskKind::kNone) {
    const int64_t offset = indexer.row_offset(row);
    mask_row = kKind == MaskKind::kBool ? static_cast<const void*>(static_cast<const bool*>(mask) + offset)
                                        : static_cast<const void*>(static_cast<const scalar_t*>(mask) + offset);
  }
  float max = -INFINITY, sum = 0.0f;
  for (int j = threadIdx.x; j < n; j += kBlockThreads) {
    const float s = score<scalar_t, kKind>(xr, mask_row, indexer.stride_k, j, n, scale);
    if (s > max) {
      sum = sum * __expf(max - s) + 1.0f;
      max = s;
    } else if (s != -INFINITY) {
      sum += __expf(s - max);
    }
  }
  const float row_max = row_reduce<kBlockThreads>(max, MaxOp(), scratch);
  const float safe_max = row_max == -INFINITY ? 0.0f : row_max;
  // A thread whose max is -inf saw only masked scores (sum 0) or NaN ones (`s > max` is false for NaN: sum NaN); it
  // keeps its sum, so that a NaN reaches the row (`sum != 0` below, as in forward_registers).
  sum = max == -INFINITY ? sum : sum * __expf(max - safe_max);
  sum = row_reduce<kBlockThreads>(sum, SumOp(), scratch);
  const float inv = sum != 0.0f ? 1.0f / sum : 0.0f;
  scalar_t* yr = y + row * sk;
  for (int64_t j = threadIdx.x; j < sk; j += kBlockThreads) {
    const float s = score<scalar_t, kKind>(xr, mask_row, indexer.stride_k, static_cast<int>(j), n, scale);
    yr[j] = static_cast<scalar_t>(__expf(s - safe_max) * inv);
  }
}

template <typename scalar_t, int kThreads, int kElems>
__global__ void __launch_bounds__(kThreads == kWarp ? kWarp * kWarpRowsPerBlock : kThreads)
backward_registers(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                   int64_t rows, int sk, float scale) {
  __shared__ float scratch[kThreads / kWarp];
  const int rows_per_block = blockDim.x / kThreads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * rows_per_block + threadIdx.x / kThreads;
  if (row >= rows) return;
  const int lane = threadIdx.x % kThreads;
  float p[kElems], g[kElems];
  float dot = 0.0f;
#pragma unroll
  for (int i = 0; i < kElems; ++i) {
    const int j = lane + i * kThreads;
    p[i] = j < sk ? static_cast<float>(y[row * sk + j]) : 0.0f;
    g[i] = j < sk ? static_cast<float>(dy[row * sk + j]) : 0.0f;
    dot += p[i] * g[i];
  }
  dot = row_reduce<kThreads>(dot, SumOp(), scratch);
#pragma unroll
  for (int i = 0; i < kElems; ++i) {
    const int j = lane + i * kThreads;
    if (j < sk) dx[row * sk + j] = static_cast<scalar_t>(scale * p[i] * (g[i] - dot));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlockThreads)
backward_looped(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                int64_t sk, float scale) {
  __shared__ float scratch[kBlockThreads / kWarp];
  const int64_t base = static_cast<int64_t>(blockIdx.x) * sk;
  float dot = 0.0f;
  for (int64_t j = threadIdx.x; j < sk; j += kBlockThreads) {
    dot += static_cast<float>(y[base + j]) * static_cast<float>(dy[base + j]);
  }
  dot = row_reduce<kBlockThreads>(dot, SumOp(), scratch);
  for (int64_t j = threadIdx.x; j < sk; j += kBlockThreads) {
    const float p = static_cast<float>(y[base + j]);
    dx[base + j] = static_cast<scalar_t>(scale * p * (static_cast<float>(dy[base + j]) - dot));
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Launch: pick the kernel shape and kElems from Sk.
// ---------------------------------------------------------------------------------------------------------------------

// Calls `launch(threads_per_row_tag, elems_tag)` with compile-time constants, or returns false for looped rows.
template <typename Launch>
bool with_register_config(int64_t sk, Launch&& launch) {
  if (sk <= 128) return launch(std::integral_constant<int, kWarp>(), std::integral_constant<int, 4>()), true;
  if (sk <= 256) return launch(std::integral_constant<int, kWarp>(), std::integral_constant<int, 8>()), true;
  if (sk <= 512) return launch(std::integral_constant<int, kWarp>(), std::integral_constant<int, 16>()), true;
  if (sk <= kWarpMaxCols) return launch(std::integral_constant<int, kWarp>(), std::integral_constant<int, 32>()), true;
  if (sk <= 2048) return launch(std::integral_constant<int, kBlockThreads>(), std::integral_constant<int, 4>()), true;
  if (sk <= 4096) return launch(std::integral_constant<int, kBlockThreads>(), std::integral_constant<int, 8>()), true;
  if (sk <= 8192) return launch(std::integral_constant<int, kBlockThreads>(), std::integral_constant<int, 16>()), true;
  if (sk <= kBlockMaxCols) {
    return launch(std::integral_constant<int, kBlockThreads>(), std::integral_constant<int, 32>()), true;
  }
  return false;
}

template <int kThreads>
dim3 grid_for(int64_t rows) {
  const int64_t per_block = kThreads == kWarp ? kWarpRowsPerBlock : 1;
  return dim3(static_cast<unsigned>((rows + per_block - 1) / per_block));
}

template <int kThreads>
dim3 block_for() {
  return dim3(kThreads == kWarp ? kWarp * kWarpRowsPerBlock : kThreads);
}

template <typename scalar_t, MaskKind kKind>
void launch_forward(const at::Tensor& x, const void* mask, at::Tensor& y, const MaskIndexer& indexer, double scale,
                    bool is_causal, cudaStream_t stream) {
  const int64_t sk = x.size(-1);
  const int64_t rows = x.numel() / sk;
  const scalar_t* px = x.const_data_ptr<scalar_t>();
  scalar_t* py = y.mutable_data_ptr<scalar_t>();
  const float s = static_cast<float>(scale);
  const bool in_registers = with_register_config(sk, [&](auto threads, auto elems) {
    constexpr int kThreads = decltype(threads)::value, kElems = decltype(elems)::value;
    forward_registers<scalar_t, kKind, kThreads, kElems><<<grid_for<kThreads>(rows), block_for<kThreads>(), 0, stream>>>(
        px, mask, py, indexer, rows, static_cast<int>(sk), s, is_causal);
  });
  if (!in_registers) {
    forward_looped<scalar_t, kKind><<<static_cast<unsigned>(rows), kBlockThreads, 0, stream>>>(
        px, mask, py, indexer, rows, sk, s, is_causal);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor masked_softmax_forward_cuda(const at::Tensor& x, const c10::optional<at::Tensor>& mask, double scale,
                                       bool is_causal) {
  masked_softmax::check_forward(x, mask, is_causal);
  check_dtype(x, "x", {at::kFloat, at::kHalf, at::kBFloat16});
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  at::Tensor y = empty_output_like(input);
  if (input.numel() == 0) return y;
  TORCH_CHECK_VALUE(input.numel() / input.size(-1) <= INT32_MAX, "argument `x` has more than 2^31 rows");
  TORCH_CHECK_VALUE(input.size(-1) <= INT32_MAX, "argument `x` has rows longer than 2^31 elements");
  const MaskIndexer indexer = masked_softmax::mask_indexer(mask, input.sizes());
  const void* pm = mask.has_value() ? mask->const_data_ptr() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  DISPATCH_CUDA_DTYPES(input.scalar_type(), "masked_softmax_forward_cuda", [&] {
    switch (masked_softmax::mask_kind(mask)) {
      case MaskKind::kNone:
        launch_forward<scalar_t, MaskKind::kNone>(input, pm, y, indexer, scale, is_causal, stream);
        break;
      case MaskKind::kBool:
        launch_forward<scalar_t, MaskKind::kBool>(input, pm, y, indexer, scale, is_causal, stream);
        break;
      case MaskKind::kAdditive:
        launch_forward<scalar_t, MaskKind::kAdditive>(input, pm, y, indexer, scale, is_causal, stream);
        break;
    }
  });
  return y;
}

at::Tensor masked_softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& y, double scale) {
  masked_softmax::check_backward(grad, y);
  check_dtype(y, "y", {at::kFloat, at::kHalf, at::kBFloat16});
  const c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor dy = grad.contiguous();
  const at::Tensor probs = y.contiguous();
  at::Tensor dx = empty_output_like(probs);
  if (probs.numel() == 0) return dx;
  const int64_t sk = probs.size(-1);
  const int64_t rows = probs.numel() / sk;
  TORCH_CHECK_VALUE(rows <= INT32_MAX && sk <= INT32_MAX, "argument `y` has more than 2^31 rows or columns");
  auto stream = c10::cuda::getCurrentCUDAStream();
  const float s = static_cast<float>(scale);
  DISPATCH_CUDA_DTYPES(probs.scalar_type(), "masked_softmax_backward_cuda", [&] {
    const scalar_t* pdy = dy.const_data_ptr<scalar_t>();
    const scalar_t* py = probs.const_data_ptr<scalar_t>();
    scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
    const bool in_registers = with_register_config(sk, [&](auto threads, auto elems) {
      constexpr int kThreads = decltype(threads)::value, kElems = decltype(elems)::value;
      backward_registers<scalar_t, kThreads, kElems><<<grid_for<kThreads>(rows), block_for<kThreads>(), 0, stream>>>(
          pdy, py, pdx, rows, static_cast<int>(sk), s);
    });
    if (!in_registers) {
      backward_looped<scalar_t><<<static_cast<unsigned>(rows), kBlockThreads, 0, stream>>>(pdy, py, pdx, sk, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) {
  m.impl("masked_softmax_forward", &masked_softmax_forward_cuda);
  m.impl("masked_softmax_backward", &masked_softmax_backward_cuda);
}

}  // namespace kernels
