// Shared by the CUDA attention kernels (csrc/cuda/attention_forward.cu, csrc/cuda/attention_backward.cu): launch
// parameters, PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16), the swizzled shared-memory tile layout and the
// mask logic. Layouts and semantics: csrc/cpu/attention.cpp and the schema comment in csrc/ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <kernels/checks.h>
#include <kernels/philox.h>

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

namespace kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kBlockM = 16 * kWarps;  // query rows per CTA
constexpr int kBlockN = 64;           // keys per tile
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

enum class MaskKind { kNone, kBool, kAdditive };

struct Params {
  const void *q, *k, *v;
  void* out;                   // forward: written; backward: read
  float* lse;                  // forward: written; backward: read
  const void* grad_out;        // backward only, like `out`: (B, H, Sq, D) contiguous
  float* delta;                // backward only: rowsum(grad_out * out), (B, H, Sq)
  void *dq, *dk, *dv;          // backward only: contiguous (B, H, Sq, D), (B, Hkv, Sk, D)
  const void* mask;            // bool or the input dtype, (B, H, Sq, Sk) through strides (0 where broadcast)
  const bool* padding;         // (B, Sk) through strides, True = padding; may be null
  int64_t q_stride[3], k_stride[3], v_stride[3];  // batch, head, row (the head dim is contiguous)
  int64_t mask_stride[4], padding_stride[2];
  int batch, heads, kv_heads, sq, sk;
  float scale_log2;            // softmax scale * log2(e)
  float dropout_p, keep_scale;
  uint64_t seed;
  bool causal;
};

// --- PTX wrappers -----------------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

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

// A (rows x D) tile of 16-byte chunks; chunk c of row r is stored at chunk c ^ (r % 8), so the 8 rows an ldmatrix
// reads at one column hit 8 different bank groups.
template <int D>
__device__ __forceinline__ int swizzle(int row, int col) {  // element offset of (row, col), col a multiple of 8
  return row * D + (((col >> 3) ^ (row & 7)) << 3);
}

// Loads rows [row0, row0 + R) of a (rows x D) matrix (row stride `stride` elements) into a swizzled tile; rows past
// `rows` are zeros.
template <typename scalar_t, int D, int R = kBlockN>
__device__ __forceinline__ void load_tile(scalar_t* tile, const scalar_t* src, int64_t stride, int row0, int rows) {
  constexpr int kChunks = R * D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool valid = row0 + row < rows;
    const scalar_t* from = src + (valid ? (row0 + row) * stride + col : 0);
    cp_async_16(tile + swizzle<D>(row, col), from, valid);
  }
}

// The score of (row, col) in base 2: x = q.k * scale * log2(e) plus the additive mask * log2(e), or -inf when the
// key is past Sk, hidden by causality, padding or the bool mask.
template <typename scalar_t, MaskKind kMask>
__device__ __forceinline__ float masked_score(const Params& p, int b, int h, int row, int col, float qk) {
  float x = qk * p.scale_log2;
  bool hidden = col >= p.sk || (p.causal && col > row);
  if (p.padding != nullptr && !hidden) hidden = p.padding[b * p.padding_stride[0] + col * p.padding_stride[1]];
  if constexpr (kMask != MaskKind::kNone) {
    if (!hidden && row < p.sq) {
      const int64_t at = b * p.mask_stride[0] + h * p.mask_stride[1] + static_cast<int64_t>(row) * p.mask_stride[2] +
                         static_cast<int64_t>(col) * p.mask_stride[3];
      if constexpr (kMask == MaskKind::kBool) {
        hidden = !static_cast<const bool*>(p.mask)[at];
      } else {
        x += to_float(static_cast<const scalar_t*>(p.mask)[at]) * kLog2e;
      }
    }
  }
  return hidden ? -INFINITY : x;
}

__device__ __forceinline__ uint64_t dropout_offset(const Params& p, int bh, int row, int col) {
  return (static_cast<uint64_t>(bh) * p.sq + row) * p.sk + col;
}


// --- host side, shared by the forward and backward launchers ----------------------------------------------------------

// The tensor itself when its head dim is contiguous and its rows are 16-byte aligned (cp.async), else a copy.
inline at::Tensor loadable(const at::Tensor& x) {
  const bool ok = x.stride(3) == 1 && x.stride(2) % 8 == 0 && x.stride(1) % 8 == 0 && x.stride(0) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0;
  return ok ? x : x.contiguous();
}

// Checks q, k, v and the masks (every message names the argument); returns the kind of `mask`.
inline MaskKind check_attention_arguments(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const std::optional<at::Tensor>& mask,
                                          const std::optional<at::Tensor>& key_padding_mask, double dropout_p) {
  check_dtype(q, "q", {at::kHalf, at::kBFloat16});
  check_dim(q, "q", 4);
  check_dim(k, "k", 4);
  check_dim(v, "v", 4);
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(v, "v", q, "q");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  check_same_shape(v, "v", k, "k");
  const int64_t batch = q.size(0), heads = q.size(1), sq = q.size(2), dim = q.size(3);
  const int64_t kv_heads = k.size(1), sk = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == batch, "argument `k` has batch ", k.size(0), "; expected ", batch,
                    " (the batch of `q`)");
  TORCH_CHECK_VALUE(k.size(3) == dim, "argument `k` has head dim ", k.size(3), "; expected ", dim,
                    " (the head dim of `q`)");
  TORCH_CHECK_VALUE(dim == 64 || dim == 128, "argument `q` has head dim ", dim,
                    "; the CUDA kernel supports head dims 64 and 128");
  TORCH_CHECK_VALUE(kv_heads > 0 ? heads % kv_heads == 0 : heads == 0, "argument `k` has ", kv_heads,
                    " heads, which does not divide the ", heads, " heads of `q`");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
  TORCH_CHECK_VALUE(sq < (1LL << 31) && sk < (1LL << 31), "argument `q`/`k`: sequence lengths must be < 2^31");
  MaskKind kind = MaskKind::kNone;
  if (mask.has_value()) {
    check_dim(*mask, "mask", 4);
    check_same_device(*mask, "mask", q, "q");
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool || mask->scalar_type() == q.scalar_type(),
                      "argument `mask` has dtype ", mask->scalar_type(), "; expected bool or ", q.scalar_type(),
                      " (the dtype of `q`)");
    const std::vector<int64_t> expected{batch, heads, sq, sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
    kind = mask->scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  }
  if (key_padding_mask.has_value()) {
    check_dim(*key_padding_mask, "key_padding_mask", 2);
    check_same_device(*key_padding_mask, "key_padding_mask", q, "q");
    check_dtype(*key_padding_mask, "key_padding_mask", {at::kBool});
    const std::vector<int64_t> expected{batch, sk};
    TORCH_CHECK_VALUE(key_padding_mask->sizes() == at::IntArrayRef(expected), "argument `key_padding_mask` has shape ",
                      key_padding_mask->sizes(), "; expected ", at::IntArrayRef(expected));
  }
  return kind;
}

// Launch parameters common to every kernel (the caller adds its outputs).
inline Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
                          bool is_causal, double scale, double dropout_p, int64_t seed) {
  Params p{};
  const int64_t batch = q.size(0), heads = q.size(1), sq = q.size(2), kv_heads = k.size(1), sk = k.size(2);
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  for (int i = 0; i < 3; ++i) {
    p.q_stride[i] = q.stride(i);
    p.k_stride[i] = k.stride(i);
    p.v_stride[i] = v.stride(i);
  }
  if (mask.has_value()) {
    p.mask = mask->const_data_ptr();
    for (int i = 0; i < 4; ++i) p.mask_stride[i] = mask->stride(i);
  }
  if (key_padding_mask.has_value()) {
    p.padding = key_padding_mask->const_data_ptr<bool>();
    p.padding_stride[0] = key_padding_mask->stride(0);
    p.padding_stride[1] = key_padding_mask->stride(1);
  }
  p.batch = static_cast<int>(batch);
  p.heads = static_cast<int>(heads);
  p.kv_heads = static_cast<int>(kv_heads);
  p.sq = static_cast<int>(sq);
  p.sk = static_cast<int>(sk);
  p.scale_log2 = static_cast<float>(scale) * kLog2e;
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = static_cast<float>(1.0 / (1.0 - dropout_p));
  p.seed = static_cast<uint64_t>(seed);
  p.causal = is_causal;
  return p;
}

}  // namespace
}  // namespace kernels
