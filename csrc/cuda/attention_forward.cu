// Fused masked attention forward on CUDA tensor cores (mma.sync m16n8k16, sm_80+), fp16 and bf16, head dims 64 and
// 128. Semantics and layouts as in csrc/cpu/attention.cpp (the schema comment in csrc/ops.cpp): out (B, H, Sq, D)
// contiguous, lse (B, H, Sq) fp32 (+inf for rows with no visible key), masks combined here and read through strides.
//
// One CTA = 4 warps = 64 query rows (16 per warp) of one (b, h); it walks the keys in tiles of 64: K and V tiles are
// brought to shared memory with cp.async (16-byte chunks, XOR-swizzled by row so ldmatrix is conflict free), the V
// load overlapping S = Q K^T and the softmax. Scores live in registers in the mma accumulator layout: thread
// (g = lane / 4, t = lane % 4) of a warp holds rows g and g + 8, columns 2t and 2t + 1 of every 8-column tile.
// Online softmax in base 2 (scores pre-multiplied by scale * log2 e) with fp32 running max and sum per row, reduced
// across the 4 threads of a row with shuffles. P is rounded to the input dtype and fed back as the A operand of
// O += P V; O accumulates in fp32 registers. Key tiles that causality or the key padding hides from the whole CTA are
// skipped. Only c10's CUDA headers are used (see csrc/cuda/residual_add.cu).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#include <cstdint>
#include <limits>

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
  void* out;
  float* lse;
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

// Loads rows [row0, row0 + 64) of a (rows x D) matrix (row stride `stride` elements) into a swizzled tile; rows past
// `rows` are zeros.
template <typename scalar_t, int D>
__device__ __forceinline__ void load_tile(scalar_t* tile, const scalar_t* src, int64_t stride, int row0, int rows) {
  constexpr int kChunks = kBlockN * D / 8;
#pragma unroll
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int row = c / (D / 8), col = (c % (D / 8)) * 8;
    const bool valid = row0 + row < rows;
    const scalar_t* from = src + (valid ? (row0 + row) * stride + col : 0);
    cp_async_16(tile + swizzle<D>(row, col), from, valid);
  }
}

// --- the kernel -------------------------------------------------------------------------------------------------------

template <typename scalar_t, int D, MaskKind kMask, bool kDropout>
__global__ void __launch_bounds__(kThreads) attention_forward_kernel(const Params p) {
  static_assert(kBlockM == kBlockN, "the Q tile reuses the K/V tile loader");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* q_tile = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* k_tile = q_tile + kBlockM * D;
  scalar_t* v_tile = k_tile + kBlockN * D;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int bh = blockIdx.y, b = bh / p.heads, h = bh % p.heads, hkv = h / (p.heads / p.kv_heads);
  // Causal CTAs with more rows do more work: start them first.
  const int m_block = p.causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int m0 = m_block * kBlockM;

  const scalar_t* q = static_cast<const scalar_t*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1];
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + b * p.k_stride[0] + hkv * p.k_stride[1];
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + b * p.v_stride[0] + hkv * p.v_stride[1];

  load_tile<scalar_t, D>(q_tile, q, p.q_stride[2], m0, p.sq);
  cp_async_commit();

  const int row_a = m0 + warp * 16 + g, row_b = row_a + 8;  // this thread's two query rows
  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  int n_end = p.sk;
  if (p.causal) n_end = min(n_end, m0 + kBlockM);  // keys past the CTA's last row are hidden from all its rows
  for (int n0 = 0; n0 < n_end; n0 += kBlockN) {
    if (p.padding != nullptr) {  // skip a tile whose keys are all padding
      const int j = n0 + threadIdx.x;
      const bool visible = threadIdx.x < kBlockN && j < p.sk &&
                           !p.padding[b * p.padding_stride[0] + j * p.padding_stride[1]];
      if (!__syncthreads_or(visible)) continue;
    }
    __syncthreads();  // the previous tile's readers are done with k_tile / v_tile
    load_tile<scalar_t, D>(k_tile, k, p.k_stride[2], n0, p.sk);
    cp_async_commit();
    load_tile<scalar_t, D>(v_tile, v, p.v_stride[2], n0, p.sk);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K have landed; V may still be in flight
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x 64 keys.
    float s[kBlockN / 8][4];
#pragma unroll
    for (int i = 0; i < kBlockN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      uint32_t a[4];
      ldmatrix_x4(a, q_tile + swizzle<D>(warp * 16 + lane % 16, kk + (lane / 16) * 8));
#pragma unroll
      for (int nn = 0; nn < kBlockN; nn += 16) {
        uint32_t bk[4];  // b0, b1 of key tile nn, then of nn + 8
        ldmatrix_x4(bk, k_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
        mma<scalar_t>(s[nn / 8], a, bk[0], bk[1]);
        mma<scalar_t>(s[nn / 8 + 1], a, bk[2], bk[3]);
      }
    }

    // Scale to base 2, mask, and update the running max / sum.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half ? row_b : row_a;
      float block_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n0 + nt * 8 + 2 * t + e;
          float x = s[nt][half * 2 + e] * p.scale_log2;
          bool hidden = col >= p.sk || (p.causal && col > row);
          if (p.padding != nullptr && !hidden) hidden = p.padding[b * p.padding_stride[0] + col * p.padding_stride[1]];
          if constexpr (kMask != MaskKind::kNone) {
            if (!hidden && row < p.sq) {
              const int64_t at = b * p.mask_stride[0] + h * p.mask_stride[1] + row * p.mask_stride[2] +
                                 col * p.mask_stride[3];
              if constexpr (kMask == MaskKind::kBool) {
                hidden = !static_cast<const bool*>(p.mask)[at];
              } else {
                x += to_float(static_cast<const scalar_t*>(p.mask)[at]) * kLog2e;
              }
            }
          }
          x = hidden ? -INFINITY : x;
          s[nt][half * 2 + e] = x;
          block_max = fmaxf(block_max, x);
        }
      }
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffff, block_max, 1));
      block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffff, block_max, 2));
      const float new_max = fmaxf(row_max[half], block_max);
      // Shift by 0 while the row has seen nothing visible, so exp2(-inf - shift) = 0 and never NaN.
      const float shift = new_max == -INFINITY ? 0.f : new_max;
      const float alpha = exp2f(row_max[half] - shift);
      row_max[half] = new_max;
      // Dropout keep bits of this row's 16 elements, in a rolled loop: Philox unrolled 16 times would spill.
      uint32_t keep = 0xffffffffu;
      if constexpr (kDropout) {
        keep = 0;
#pragma unroll 1
        for (int i = 0; i < 2 * kBlockN / 8; ++i) {
          const int col = n0 + (i / 2) * 8 + 2 * t + i % 2;
          const uint64_t offset = ((static_cast<uint64_t>(bh) * p.sq + row) * p.sk) + col;
          keep |= static_cast<uint32_t>(row < p.sq && col < p.sk && dropout_keep(p.seed, offset, p.dropout_p)) << i;
        }
      }
      float sum = 0.f;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float pr = exp2f(s[nt][half * 2 + e] - shift);
          sum += pr;  // the softmax denominator counts dropped elements too
          s[nt][half * 2 + e] = (keep >> (nt * 2 + e)) & 1u ? pr : 0.f;
        }
      }
      row_sum[half] = row_sum[half] * alpha + sum;  // partial: the quad's 4 threads are summed at the end
#pragma unroll
      for (int i = 0; i < D / 8; ++i) {
        o[i][half * 2] *= alpha;
        o[i][half * 2 + 1] *= alpha;
      }
    }

    cp_async_wait<0>();
    __syncthreads();
    // O += P V: the S accumulators of key tiles (2kk, 2kk + 1) are exactly the A fragment of a 16-key k-step.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<scalar_t>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<scalar_t>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<scalar_t>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<scalar_t>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nn = 0; nn < D; nn += 16) {
        uint32_t bv[4];  // b0, b1 of dims nn .. nn + 7, then of nn + 8 .. nn + 15
        ldmatrix_x4_trans(bv, v_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, nn + (lane / 16) * 8));
        mma<scalar_t>(o[nn / 8], a, bv[0], bv[1]);
        mma<scalar_t>(o[nn / 8 + 1], a, bv[2], bv[3]);
      }
    }
  }

  cp_async_wait<0>();  // no copy outlives the CTA (e.g. the Q tile when every key tile was skipped)

  // Finish: total row sums over the quad, normalise, write out and lse.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffff, sum, 1);
    sum += __shfl_xor_sync(0xffffffff, sum, 2);
    const int row = half ? row_b : row_a;
    if (row >= p.sq) continue;
    const float inv = sum > 0.f ? p.keep_scale / sum : 0.f;
    scalar_t* out = static_cast<scalar_t*>(p.out) + (static_cast<int64_t>(bh) * p.sq + row) * D;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      *reinterpret_cast<uint32_t*>(out + i * 8 + 2 * t) = pack2<scalar_t>(o[i][half * 2] * inv, o[i][half * 2 + 1] * inv);
    }
    if (t == 0) {
      p.lse[static_cast<int64_t>(bh) * p.sq + row] =
          sum > 0.f ? (row_max[half] + log2f(sum)) * kLn2 : std::numeric_limits<float>::infinity();
    }
  }
}

// --- host side --------------------------------------------------------------------------------------------------------

// The tensor itself when its head dim is contiguous and its rows are 16-byte aligned (cp.async), else a copy.
at::Tensor loadable(const at::Tensor& x) {
  const bool ok = x.stride(3) == 1 && x.stride(2) % 8 == 0 && x.stride(1) % 8 == 0 && x.stride(0) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(x.const_data_ptr()) % 16 == 0;
  return ok ? x : x.contiguous();
}

template <typename scalar_t, int D, MaskKind kMask, bool kDropout>
void launch(const Params& p, cudaStream_t stream) {
  const dim3 grid((p.sq + kBlockM - 1) / kBlockM, p.batch * p.heads);
  const int smem = (kBlockM + 2 * kBlockN) * D * static_cast<int>(sizeof(scalar_t));
  auto* kernel = attention_forward_kernel<scalar_t, D, kMask, kDropout>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<grid, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int D>
void dispatch_mask(const Params& p, MaskKind mask, cudaStream_t stream) {
  const bool dropout = p.dropout_p > 0.f;
  if (mask == MaskKind::kNone) {
    dropout ? launch<scalar_t, D, MaskKind::kNone, true>(p, stream) : launch<scalar_t, D, MaskKind::kNone, false>(p, stream);
  } else if (mask == MaskKind::kBool) {
    dropout ? launch<scalar_t, D, MaskKind::kBool, true>(p, stream) : launch<scalar_t, D, MaskKind::kBool, false>(p, stream);
  } else {
    dropout ? launch<scalar_t, D, MaskKind::kAdditive, true>(p, stream)
            : launch<scalar_t, D, MaskKind::kAdditive, false>(p, stream);
  }
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                          const at::Tensor& v_in, const std::optional<at::Tensor>& mask,
                                                          const std::optional<at::Tensor>& key_padding_mask,
                                                          bool is_causal, double scale, double dropout_p, int64_t seed) {
  check_dtype(q_in, "q", {at::kHalf, at::kBFloat16});
  check_dim(q_in, "q", 4);
  check_dim(k_in, "k", 4);
  check_dim(v_in, "v", 4);
  check_same_dtype(k_in, "k", q_in, "q");
  check_same_dtype(v_in, "v", q_in, "q");
  check_same_device(k_in, "k", q_in, "q");
  check_same_device(v_in, "v", q_in, "q");
  check_same_shape(v_in, "v", k_in, "k");
  const int64_t batch = q_in.size(0), heads = q_in.size(1), sq = q_in.size(2), dim = q_in.size(3);
  const int64_t kv_heads = k_in.size(1), sk = k_in.size(2);
  TORCH_CHECK_VALUE(k_in.size(0) == batch, "argument `k` has batch ", k_in.size(0), "; expected ", batch,
                    " (the batch of `q`)");
  TORCH_CHECK_VALUE(k_in.size(3) == dim, "argument `k` has head dim ", k_in.size(3), "; expected ", dim,
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
    check_same_device(*mask, "mask", q_in, "q");
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool || mask->scalar_type() == q_in.scalar_type(),
                      "argument `mask` has dtype ", mask->scalar_type(), "; expected bool or ", q_in.scalar_type(),
                      " (the dtype of `q`)");
    const std::vector<int64_t> expected{batch, heads, sq, sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
    kind = mask->scalar_type() == at::kBool ? MaskKind::kBool : MaskKind::kAdditive;
  }
  if (key_padding_mask.has_value()) {
    check_dim(*key_padding_mask, "key_padding_mask", 2);
    check_same_device(*key_padding_mask, "key_padding_mask", q_in, "q");
    check_dtype(*key_padding_mask, "key_padding_mask", {at::kBool});
    const std::vector<int64_t> expected{batch, sk};
    TORCH_CHECK_VALUE(key_padding_mask->sizes() == at::IntArrayRef(expected), "argument `key_padding_mask` has shape ",
                      key_padding_mask->sizes(), "; expected ", at::IntArrayRef(expected));
  }

  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = loadable(q_in), k = loadable(k_in), v = loadable(v_in);
  at::Tensor out = empty_output({batch, heads, sq, dim}, q.options());
  at::Tensor lse = empty_output({batch, heads, sq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};

  Params p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
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

  auto stream = c10::cuda::getCurrentCUDAStream();
  if (q.scalar_type() == at::kHalf) {
    dim == 64 ? dispatch_mask<__half, 64>(p, kind, stream) : dispatch_mask<__half, 128>(p, kind, stream);
  } else {
    dim == 64 ? dispatch_mask<__nv_bfloat16, 64>(p, kind, stream) : dispatch_mask<__nv_bfloat16, 128>(p, kind, stream);
  }
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CUDA, m) { m.impl("attention_forward", &attention_forward_cuda); }

}  // namespace kernels
