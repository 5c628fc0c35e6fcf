// Device helpers of the CUDA attention kernels (part of attention_common.cuh, which includes it): PTX wrappers
// (cp.async, ldmatrix, mma.sync m16n8k16, max.NaN), fp16 / bf16 conversions and the swizzled shared-memory tile layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention_params.cuh"

namespace kernels {
namespace {

// --- PTX wrappers -----------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// The Philox seed of a problem with dropout, read from device memory (a cached load: every thread reads the same word).
__device__ __forceinline__ uint64_t dropout_seed(const Params& p) { return static_cast<uint64_t>(__ldg(p.seed)); }

// 16 bytes global -> shared, zero-filled when !valid.
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}

// c (16x8, fp32) += a (16x16) * b (16x8), a row-major and b column-major fragments.
template <typename scalar_t>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// max(a, b), NaN when either is NaN (PTX max.NaN, sm_80+; fmaxf returns the other operand): the forward's running max
// carries a NaN score to the row's shift, and through it to every P, the output and the lse of the row.
__device__ __forceinline__ float max_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;\n" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

template <typename scalar_t>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  } else {
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
  }
}

template <typename scalar_t>
__device__ __forceinline__ float to_float(scalar_t x) {
  if constexpr (std::is_same_v<scalar_t, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

// --- shared-memory tiles ----------------------------------------------------------------------------------------------

// A (rows x D) tile of 16-byte chunks (8 elements), swizzled so that the 8 rows an ldmatrix reads at one chunk column
// fall in 8 different 16-byte bank groups of a 128-byte line. Within each full group of 8 chunks of a row, chunk c is
// stored at c ^ (row % 8). D = 32 and D = 96 end in a group of 4 chunks (64 bytes), where rows r and r + 1 share a
// 128-byte line: there chunk c is stored at c ^ ((row / 2) % 4), which spreads the 8 rows over the 8 bank groups
// (bank group = 4 * (row % 2) + stored chunk). Both maps permute chunks within their group, so the tile is dense.
template <int D>
__host__ __device__ __forceinline__ int swizzle(int row, int col) {  // element offset of (row, col), col % 8 == 0
  constexpr int kFullChunks = (D / 8) & ~7;  // chunks of a row in full groups of 8
  const int chunk = col >> 3;
  const int flip = chunk < kFullChunks ? (row & 7) : ((row >> 1) & 3);
  return row * D + ((chunk ^ flip) << 3);
}

// Loads rows [row0, row0 + R) of a (rows x D) matrix (row stride `stride` elements) into a swizzled tile; rows past
// `rows` are zeros, and so are the rows `padding` flags when given (K and V rows of padding keys, padding[key *
// padding_stride]): whatever a padding key holds, NaN included, never enters a product, not even as 0 * NaN.
template <typename scalar_t, int D, int R>
__device__ __forceinline__ void load_tile(scalar_t* tile, const scalar_t* src, int64_t stride, int row0, int rows,
                                          const bool* padding = nullptr, int64_t padding_stride = 0) {
  constexpr int kChunks = R * D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    bool valid = row0 + row < rows;
    if (padding != nullptr && valid) valid = !padding[(row0 + row) * padding_stride];
    const scalar_t* from = src + (valid ? (row0 + row) * stride + col : 0);
    cp_async_16(tile + swizzle<D>(row, col), from, valid);
  }
}

}  // namespace
}  // namespace kernels
