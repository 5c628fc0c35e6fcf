// Launch parameters of the CUDA attention kernels (part of attention_common.cuh, which includes it): the launch
// constants, the per-head-dim tile sizes (AttentionTiles), the problem description every kernel takes (Params) and
// the launchers' declarations. Host and device; c10 only.
#pragma once

#include <c10/core/ScalarType.h>
#include <cuda_runtime.h>

#include <cstdint>

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

}  // namespace
}  // namespace kernels
