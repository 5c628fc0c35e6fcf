// Shared by the CUDA attention kernels (attention_forward_kernel.cuh, attention_backward_kernels.cuh, instantiated
// per head dim in attention_forward_d*.cu and attention_backward_d*_*.cu) and their launchers (attention_forward.cu,
// attention_backward.cu, varlen_attention.cu): launch parameters, the per-head-dim tile sizes, PTX wrappers (cp.async,
// ldmatrix, mma.sync m16n8k16), the swizzled shared-memory tile layout, the mask logic and the kernel launch. Device
// code and c10 only (no ATen, which would cost each of the many instantiation files seconds of host compile time);
// the host-side argument checks are in attention_arguments.cuh. Layouts and semantics: csrc/cpu/attention.cpp and the
// schema comments in csrc/ops.cpp.
//
// Head dims 32, 64, 96, 128 and 256. Every kernel runs 4 warps; a warp owns 16 query rows (or 16 keys in the dK/dV
// kernel), so what varies with the head dim D is the other side of each tile, chosen in AttentionTiles<D> so that the
// fp32 accumulators (D / 2 registers per thread for O, dQ, dK or dV) plus the score tiles stay under the 255 registers
// a thread may hold at 128 threads per CTA, with no spills on sm_80 and sm_90 (csrc/compile_check.py reports it).
//
// Dense and packed (varlen) problems share the kernels: a CTA works on batch entry (or sequence) b and head h; with
// Params::spans_q/_k set, its rows are those of sequence b, found from its row spans (see Sequence below), and the
// outputs are addressed through Params' row strides, so the dense path is the varlen path with one sequence per batch
// entry starting at row 0.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <kernels/philox.h>

#include <cstdint>
#include <mutex>
#include <set>
#include <tuple>
#include <type_traits>

namespace kernels {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
// The forward and dK/dV kernels declare __launch_bounds__(kThreads, kMinBlocks): with an explicit minimum of one CTA
// per SM, ptxas gives a kernel every register it needs instead of capping a light one at an occupancy step (80, 96,
// 128 or 168 registers) with a few bytes of spills, as it did for the D = 32 dK/dV kernel without it. The dQ kernel
// takes it with dropout only (0: no minimum; with dropout, ptxas held the varlen D = 64 and 128 variants to 128 and
// 168 registers with spills); without dropout the minimum made ptxas schedule more aggressively and spill at D = 128
// and 256.
constexpr int kMinBlocks = 1;
constexpr int kBlockM = 16 * kWarps;  // query rows per CTA (forward, dQ), keys per CTA (dK/dV)

enum class MaskKind { kNone, kBool, kAdditive };

// Tile sizes per head dim D (4 warps each). Shared memory per CTA, 2-byte elements, with the K / V tiles of the
// forward and the dQ kernel double-buffered (the next tile is copied while this one is computed):
//   forward kForwardRows * D * 2 + 4 * kForwardBlockN * D * 2 (+ the S exchange at D = 256, 4 KB)
//                                                      ->  D = 32: 20 KB, 64: 40 KB, 96: 60 KB, 128: 80 KB, 256: 52 KB
//   dK/dV   (2 * kBlockM + 2 * kBackwardBlockQ) * D * 2 -> 10, 24, 36, 40, 80 KB
//   dQ      (2 * kBlockM + 4 * kBackwardBlockK) * D * 2 -> 24, 32, 48, 64, 96 KB
// all within the opt-in limit of sm_86/sm_89 (99 KB), so every sm_80+ device runs every head dim; above 48 KB the
// launch raises the CTA's dynamic shared memory limit (launch_attention_kernel).
template <int D>
struct AttentionTiles {
  static_assert(D == 32 || D == 64 || D == 96 || D == 128 || D == 256, "unsupported head dim");
  // Query rows per forward CTA. A thread's share of O is D / 2 fp32 registers for a warp's 16 rows: at D = 256 that
  // (128) spills, so there the 4 warps pair up on 32 rows: the two warps of 16 rows each compute half of S's dot
  // products (over 128 of the 256 dims), exchange them through shared memory, and accumulate half of O's columns.
  // S is computed once, at the cost of twice the K / V tile loads per query row (as 64-row CTAs with split columns
  // would need too).
  static constexpr int kForwardRows = D > 128 ? 32 : 64;
  static constexpr int kForwardColumnSplit = kWarps * 16 / kForwardRows;  // warps sharing a 16-row group
  // dQ columns per CTA of the dQ kernel: at D = 256 two CTAs (blockIdx.z) share each 64-row block, each accumulating
  // D / 2 columns; both compute the scores in full (S = Q K^T and dP = dO V^T).
  static constexpr int kOutputSplit = D > 128 ? 2 : 1;
  static constexpr int kOutputCols = D / kOutputSplit;
  // Keys per forward tile. O takes D / kForwardColumnSplit / 2 registers and the scores kForwardBlockN / 2: 64 keys
  // up to D = 128 (128 at D = 32 spilled once the tiles were double-buffered), 16 at D = 256 (32 spilled on sm_90
  // with an additive mask and dropout when each warp computed S over all 256 dims).
  static constexpr int kForwardBlockN = D <= 128 ? 64 : 16;
  // Query rows per step of the dK/dV kernel: its two accumulators take D registers, S^T and dP^T kBackwardBlockQ.
  // (16 at D = 32 too: about 110 registers there; 32 at D = 64, where 64 rows reached 255 registers and spilled
  // with an additive mask once a -inf in it hid its key.)
  static constexpr int kBackwardBlockQ = D == 64 || D == 96 ? 32 : 16;
  // Keys per step of the dQ kernel: dQ takes kOutputCols / 2 registers, S and dP kBackwardBlockK (32 at D = 64:
  // with 64 and double-buffered K / V tiles, ptxas held every variant to 168 registers and spilled).
  static constexpr int kBackwardBlockK = D <= 32 ? 64 : D <= 128 ? 32 : 16;
  // At D = 256, dK and dV (256 fp32 registers together) cannot both live in registers: two passes of the dK/dV
  // kernel, one accumulating dV, one dK (recomputing S^T; 5 instead of 4 matrix products per step).
  static constexpr bool kSplitKeyGrads = D > 128;
};

// Which gradients a pass of the dK/dV kernel accumulates.
enum class KeyGrads { kBoth, kKeys, kValues };

struct Params {
  const void *q, *k, *v;
  void* out;                   // forward: written; backward: read
  float* lse;                  // forward: written; backward: read
  const void* grad_out;        // backward only, laid out like `out`
  float* delta;                // backward only: rowsum(grad_out * out), one per row of `out`, in its row order
  void *dq, *dk, *dv;          // backward only: dq laid out like `out`, dk / dv like each other
  const void* mask;            // bool or the input dtype, (B, H, Sq, Sk) through strides (0 where broadcast)
  const bool* padding;         // (B, Sk) through strides, True = padding; may be null
  const int* spans_q;          // varlen only: (N, 2) [start, end) rows of each sequence in q, clamped into q
                               // (varlen_attention.cu, clamp_spans_kernel); null for dense problems
  const int* spans_k;          // varlen only: the same in k / v
  int64_t q_stride[3], k_stride[3], v_stride[3];  // batch, head, row in elements (the head dim is contiguous);
                                                  // varlen: batch stride 0 (rows come from the spans)
  int64_t o_stride[3];         // batch, head, row strides of out / grad_out / dq / delta, in rows of D elements
  int64_t dkv_stride[3];       // the same for dk / dv
  int64_t lse_stride[2];       // batch, head strides of lse (its rows are contiguous)
  int64_t mask_stride[4], padding_stride[2];
  int64_t out_rows;            // rows of D elements in out (the delta kernel's extent)
  int batch, heads, kv_heads;  // varlen: batch = the number of sequences N
  int sq, sk;                  // rows of q and k per (batch, head): dense Sq and Sk; varlen the totals Tq and Tk
  int max_sq, max_sk;          // the longest sequences (grid extents): dense Sq and Sk; varlen max_seqlen_q / _k
  float scale_log2;            // softmax scale * log2(e)
  float dropout_p, keep_scale;
  const int64_t* seed;         // the Philox seed, one int64 in device memory (read only when dropout_p > 0)
  bool causal;
  bool mask_pairs;             // the mask's key stride is 1 and the address of every even key is 2-element aligned:
                               // the entries of keys (2j, 2j + 1) come in one load (masked_score_pair)
};

// Launchers of the whole forward (out, lse) and backward (delta, dK/dV, dQ) on `stream`, for a checked problem
// (defined in attention_forward.cu and attention_backward.cu; varlen_attention.cu calls them with the spans set).
void launch_attention_forward(const Params& p, MaskKind mask, at::ScalarType dtype, int64_t head_dim,
                              cudaStream_t stream);
void launch_attention_backward(const Params& p, MaskKind mask, at::ScalarType dtype, int64_t head_dim,
                               cudaStream_t stream);
// The same for one dtype (__half, __nv_bfloat16) and head dim: defined in attention_forward_kernel.cuh and
// attention_backward_kernels.cuh, instantiated in attention_forward_d<D>.cu and attention_backward_d<D>_<dtype>.cu
// (one file per head dim, or per dtype and head dim for the heavier backward, so that a parallel build spreads them).
template <typename scalar_t, int D>
void launch_attention_forward_for(const Params& p, MaskKind mask, cudaStream_t stream);
template <typename scalar_t, int D>
void launch_attention_backward_for(const Params& p, MaskKind mask, cudaStream_t stream);

namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

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

// --- the rows a CTA works on ------------------------------------------------------------------------------------------

// Batch entry b of a dense problem (all Sq rows of q, Sk of k / v, from row 0), or sequence b of a packed one (rows
// q0 .. q0 + sq - 1 of q and k0 .. k0 + sk - 1 of k / v, from its spans). Row and key indices in the kernels are
// local to the sequence (causality, masks); the helpers below turn them into addresses. The kernels take kVarlen as
// a template parameter, so on the dense path q0 = k0 = 0 and the lengths are kernel parameters at compile time,
// with no register cost.
template <bool kVarlen>
struct Sequence {
  int b, sq, sk;
  int64_t q0, k0;
};

template <bool kVarlen>
__device__ __forceinline__ Sequence<kVarlen> sequence(const Params& p, int b) {
  if constexpr (!kVarlen) {
    return {b, p.sq, p.sk, 0, 0};
  } else {
    const int q0 = p.spans_q[2 * b], k0 = p.spans_k[2 * b];
    return {b, p.spans_q[2 * b + 1] - q0, p.spans_k[2 * b + 1] - k0, q0, k0};
  }
}

// Element 0 of row 0 of head h of q (k and v: kv head hkv) in the sequence.
template <typename scalar_t, bool kVarlen>
__device__ __forceinline__ const scalar_t* q_rows(const Params& p, const Sequence<kVarlen>& s, int h) {
  return static_cast<const scalar_t*>(p.q) + s.b * p.q_stride[0] + h * p.q_stride[1] + s.q0 * p.q_stride[2];
}
template <typename scalar_t, bool kVarlen>
__device__ __forceinline__ const scalar_t* k_rows(const Params& p, const Sequence<kVarlen>& s, int hkv) {
  return static_cast<const scalar_t*>(p.k) + s.b * p.k_stride[0] + hkv * p.k_stride[1] + s.k0 * p.k_stride[2];
}
template <typename scalar_t, bool kVarlen>
__device__ __forceinline__ const scalar_t* v_rows(const Params& p, const Sequence<kVarlen>& s, int hkv) {
  return static_cast<const scalar_t*>(p.v) + s.b * p.v_stride[0] + hkv * p.v_stride[1] + s.k0 * p.v_stride[2];
}

// The key padding flags of the sequence's keys (padding[key * p.padding_stride[1]]), or null without padding.
template <bool kVarlen>
__device__ __forceinline__ const bool* key_padding(const Params& p, const Sequence<kVarlen>& s) {
  return p.padding == nullptr ? nullptr : p.padding + s.b * p.padding_stride[0];
}

// Index of query row `row` of head h among the rows (of D elements) of out / grad_out / dq / delta.
template <bool kVarlen>
__device__ __forceinline__ int64_t out_row(const Params& p, const Sequence<kVarlen>& s, int h, int row) {
  return s.b * p.o_stride[0] + h * p.o_stride[1] + (s.q0 + row) * p.o_stride[2];
}
// Index of key `key` of kv head hkv among the rows of dk / dv.
template <bool kVarlen>
__device__ __forceinline__ int64_t key_grad_row(const Params& p, const Sequence<kVarlen>& s, int hkv, int key) {
  return s.b * p.dkv_stride[0] + hkv * p.dkv_stride[1] + (s.k0 + key) * p.dkv_stride[2];
}
// Index of query row `row` of head h in lse.
template <bool kVarlen>
__device__ __forceinline__ int64_t lse_index(const Params& p, const Sequence<kVarlen>& s, int h, int row) {
  return s.b * p.lse_stride[0] + h * p.lse_stride[1] + s.q0 + row;
}

// The score of (row, col) in base 2: x = q.k * scale * log2(e) plus the additive mask * log2(e), or -inf when the
// key is past the sequence's keys, hidden by causality, padding, the bool mask or a -inf in the additive mask. A
// hidden key's score is -inf whatever q.k is, so a NaN or Inf in q / k at a hidden position (or a NaN in the additive
// mask there) reaches nothing; a visible NaN score is kept and propagates (max_nan). (Varlen problems have no mask
// and no padding.)
template <typename scalar_t, MaskKind kMask, bool kVarlen>
__device__ __forceinline__ float masked_score(const Params& p, const Sequence<kVarlen>& s, int h, int row, int col,
                                              float qk) {
  const int b = s.b;
  float x = qk * p.scale_log2;
  bool hidden = col >= s.sk || (p.causal && col > row);
  if (p.padding != nullptr && !hidden) hidden = p.padding[b * p.padding_stride[0] + col * p.padding_stride[1]];
  if constexpr (kMask != MaskKind::kNone) {
    if (!hidden && row < s.sq) {
      const int64_t at = b * p.mask_stride[0] + h * p.mask_stride[1] + static_cast<int64_t>(row) * p.mask_stride[2] +
                         static_cast<int64_t>(col) * p.mask_stride[3];
      if constexpr (kMask == MaskKind::kBool) {
        hidden = !static_cast<const bool*>(p.mask)[at];
      } else {
        const float bias = to_float(static_cast<const scalar_t*>(p.mask)[at]);
        hidden = bias == -INFINITY;
        x += bias * kLog2e;
      }
    }
  }
  return hidden ? -INFINITY : x;
}

// masked_score for the two adjacent keys col and col + 1 (col even) of one row, x0 and x1 holding q.k on entry and
// the scores on return: the pairs the forward and the dQ kernel hold (columns 2t, 2t + 1 of an mma tile). With
// Params::mask_pairs the two mask entries come in one 2-byte (bool) or 4-byte (fp16 / bf16) load, else one by one;
// the mask and padding of a pair are read only when one of its keys is still visible (one test per pair: loads issued
// for every pair up front took registers enough to spill).
template <typename scalar_t, MaskKind kMask, bool kVarlen>
__device__ __forceinline__ void masked_score_pair(const Params& p, const Sequence<kVarlen>& s, int h, int row, int col,
                                                  float& x0, float& x1) {
  bool hide0 = col >= s.sk || (p.causal && col > row);
  bool hide1 = col + 1 >= s.sk || (p.causal && col + 1 > row);
  x0 *= p.scale_log2;
  x1 *= p.scale_log2;
  const bool* padding = key_padding(p, s);
  if (padding != nullptr && !(hide0 && hide1)) {
    hide0 = hide0 || padding[col * p.padding_stride[1]];
    hide1 = hide1 || padding[min(col + 1, s.sk - 1) * p.padding_stride[1]];
  }
  if constexpr (kMask != MaskKind::kNone) {
    if (!(hide0 && hide1) && row < s.sq) {
      using Entry = std::conditional_t<kMask == MaskKind::kBool, bool, scalar_t>;
      const Entry* mask = static_cast<const Entry*>(p.mask) + s.b * p.mask_stride[0] + h * p.mask_stride[1] +
                          static_cast<int64_t>(row) * p.mask_stride[2];
      Entry m0, m1;
      if (p.mask_pairs && col + 1 < s.sk) {
        if constexpr (kMask == MaskKind::kBool) {
          const uint16_t both = *reinterpret_cast<const uint16_t*>(mask + col);  // little-endian: key col low byte
          m0 = (both & 0xffu) != 0;
          m1 = (both >> 8) != 0;
        } else {
          const uint32_t both = *reinterpret_cast<const uint32_t*>(mask + col);
          const uint16_t lo = static_cast<uint16_t>(both), hi = static_cast<uint16_t>(both >> 16);
          m0 = *reinterpret_cast<const scalar_t*>(&lo);
          m1 = *reinterpret_cast<const scalar_t*>(&hi);
        }
      } else {  // col < s.sk here (the pair is not hidden whole); col + 1 may be past the keys
        m0 = mask[col * p.mask_stride[3]];
        m1 = mask[min(col + 1, s.sk - 1) * p.mask_stride[3]];
      }
      if constexpr (kMask == MaskKind::kBool) {
        hide0 = hide0 || !m0;
        hide1 = hide1 || !m1;
      } else {
        const float bias0 = to_float(m0), bias1 = to_float(m1);
        hide0 = hide0 || bias0 == -INFINITY;
        hide1 = hide1 || bias1 == -INFINITY;
        x0 += bias0 * kLog2e;
        x1 += bias1 * kLog2e;
      }
    }
  }
  x0 = hide0 ? -INFINITY : x0;
  x1 = hide1 ? -INFINITY : x1;
}

// Whether any of keys n0 .. n0 + kKeys - 1 of the sequence is a key and not padding. A barrier (__syncthreads_or):
// every thread of the CTA calls it with the same n0.
template <int kKeys, bool kVarlen>
__device__ __forceinline__ bool any_key_visible(const Params& p, const Sequence<kVarlen>& s, int n0) {
  static_assert(kKeys <= kThreads, "one thread per key");
  const int j = n0 + threadIdx.x;
  return __syncthreads_or(threadIdx.x < kKeys && j < s.sk && !key_padding(p, s)[j * p.padding_stride[1]]);
}

// The first tile of kKeys keys at or after n0 (a tile start) with a key that is not padding; n_end or past it when
// none is left. The CTA skips tiles whose keys are all padding: one barrier per tile tested, none without padding.
template <int kKeys, bool kVarlen>
__device__ __forceinline__ int next_key_tile(const Params& p, const Sequence<kVarlen>& s, int n0, int n_end) {
  if (p.padding != nullptr) {
    while (n0 < n_end && !any_key_visible<kKeys>(p, s, n0)) n0 += kKeys;
  }
  return n0;
}

// The Philox counter of (row, col) of head h: dense ((b*H + h)*Sq + row)*Sk + col; varlen (h*Tq + q0 + row)*Tk +
// k0 + col, the dense formula with B = 1 over the packed rows (p.sq, p.sk are Tq, Tk there).
template <bool kVarlen>
__device__ __forceinline__ uint64_t dropout_offset(const Params& p, const Sequence<kVarlen>& s, int h, int row, int col) {
  const uint64_t bh = kVarlen ? h : static_cast<uint64_t>(s.b) * p.heads + h;
  return (bh * p.sq + static_cast<uint64_t>(s.q0 + row)) * p.sk + static_cast<uint64_t>(s.k0 + col);
}

// Dropout keep bits of this thread's elements of the dK/dV kernel's S^T tile, 16 keys x (8 * kTiles) query rows in
// the mma accumulator layout, element e of 8-row tile nt at bit 4 * nt + e: keys key_a (e < 2) and key_b (e >= 2),
// query rows row0 + 8 * nt + e % 2 (row0 includes the thread's 2t). A rolled loop with the seed read once: Philox
// unrolled over every element spilled there.
template <int kTiles, bool kVarlen>
__device__ __forceinline__ uint32_t dropout_keep_bits_transposed(const Params& p, const Sequence<kVarlen>& s, int h,
                                                                 int key_a, int key_b, int row0) {
  static_assert(4 * kTiles <= 32, "a thread's keep bits fit one uint32");
  const uint64_t seed = dropout_seed(p);
  uint32_t bits = 0;
#pragma unroll 1
  for (int i = 0; i < 4 * kTiles; ++i) {
    const int key = i % 4 < 2 ? key_a : key_b, row = row0 + (i / 4) * 8 + i % 2;
    const bool keep = row < s.sq && key < s.sk && dropout_keep(seed, dropout_offset(p, s, h, row, key), p.dropout_p);
    bits |= static_cast<uint32_t>(keep) << i;
  }
  return bits;
}

// --- host side: launching ---------------------------------------------------------------------------------------------

// Calls f(std::integral_constant<int, D>{}) for a head dim that passed check_head_dim.
template <typename F>
void dispatch_head_dim(int64_t dim, const F& f) {
  switch (dim) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    case 256: return f(std::integral_constant<int, 256>{});
    default: TORCH_CHECK(false, "attention on CUDA: unsupported head dim ", dim);
  }
}

// Launches kernel<<<grid, kThreads, smem, stream>>>(p), first raising the kernel's dynamic shared memory limit to
// `smem` bytes; raises when the device cannot give a CTA that much (with the kernel's static shared memory). A grid
// with no CTA (varlen: no sequence, or max_seqlen 0) launches nothing.
// The attribute queries and the limit raise run once per (kernel, device, size): each costs a runtime call, and a
// backward launches four or five kernels, which shows at decode sizes.
template <typename Kernel>
void launch_attention_kernel(Kernel kernel, dim3 grid, int smem, int64_t head_dim, const Params& p,
                             cudaStream_t stream) {
  if (grid.x == 0 || grid.y == 0) return;
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  {
    static std::mutex mutex;
    static std::set<std::tuple<const void*, int, int>> prepared;  // (kernel, device, dynamic shared memory bytes)
    const std::lock_guard<std::mutex> lock(mutex);
    const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), device, smem);
    if (prepared.count(key) == 0) {
      int optin = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      cudaFuncAttributes attributes{};
      C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
      const int64_t needed = smem + static_cast<int64_t>(attributes.sharedSizeBytes);
      TORCH_CHECK(needed <= optin, "attention on CUDA: head dim ", head_dim, " needs ", needed,
                  " bytes of shared memory per block; this device allows ", optin);
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      prepared.insert(key);
    }
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Grids put (batch x heads) on x (up to 2^31 - 1 CTAs) and the row blocks on y, whose limit is 65535 blocks of
// `block` rows (64; 32 in the forward at D = 256): longer sequences are refused with the argument named.
inline void check_row_blocks(int64_t rows, const char* name, int64_t block = kBlockM) {
  TORCH_CHECK_VALUE((rows + block - 1) / block <= 65535, "argument `", name, "` has ", rows,
                    " rows per sequence; the CUDA kernel supports up to ", 65535 * block, " at this head dim");
}

}  // namespace
}  // namespace kernels
