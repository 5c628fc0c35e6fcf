// The fused masked attention forward kernel on CUDA tensor cores (mma.sync m16n8k16, sm_80+), fp16 and bf16, head
// dims 32, 64, 96, 128 and 256. Semantics and layouts as in csrc/cpu/attention.cpp (the schema comment in
// csrc/ops.cpp): out (B, H, Sq, D) contiguous, lse (B, H, Sq) fp32 (+inf for rows with no visible key, NaN for rows
// with a visible NaN), masks combined here and read through strides. The same kernel serves packed sequences
// (csrc/cuda/varlen_attention.cu, Params::spans_q).
//
// One CTA = 4 warps = 64 query rows (16 per warp) of one (b, h); it walks the keys in tiles of
// AttentionTiles<D>::kForwardBlockN keys (64 up to D = 128, 16 at D = 256; attention_params.cuh says why). At D = 256 a CTA holds 32 rows, two warps per 16 rows: each computes S over half of the dims, the two
// halves are added through shared memory, and each accumulates half of O's columns. K and V tiles are brought to
// shared memory with cp.async (16-byte chunks, XOR-swizzled by row so ldmatrix is conflict free) into two buffers:
// the copies of tile j + 1 are issued before tile j is computed and overlap all of its work (S = Q K^T, the softmax,
// O += P V); within a tile, the V copy still overlaps S and the softmax. Scores live in registers in the mma
// accumulator layout: thread (g = lane / 4, t = lane % 4) of a warp holds rows g and g + 8, columns 2t and 2t + 1 of
// every 8-column tile (the pairs masked_score_pair reads the mask for).
// Online softmax in base 2 (scores pre-multiplied by scale * log2 e) with fp32 running max and sum per row, reduced
// across the 4 threads of a row with shuffles; the max propagates NaN (max_nan). P is rounded to the input dtype and
// fed back as the A operand of O += P V; O accumulates in fp32 registers. Key tiles that causality or the key
// padding hides from the whole CTA are skipped.
//
// Included by the per-head-dim files attention_forward_d<D>.cu, each instantiating launch_attention_forward_for for
// fp16 and bf16; the op itself is in attention_forward.cu.
#pragma once

#include <limits>

#include "attention_common.cuh"

namespace kernels {
namespace {

// --- the kernel -------------------------------------------------------------------------------------------------------

template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen>
__global__ void __launch_bounds__(kThreads, kMinBlocks) attention_forward_kernel(const Params p) {
  using Tiles = AttentionTiles<D>;
  constexpr int kBlockN = Tiles::kForwardBlockN, kRows = Tiles::kForwardRows;
  constexpr int kSplit = Tiles::kForwardColumnSplit;  // warps per 16-row group (1, or 2 at D = 256)
  constexpr int DO = D / kSplit;  // a warp's columns of O, and its dims of S's dot products: d0 .. d0 + DO - 1
  static_assert(kBlockN % 16 == 0, "whole 16-key steps of P V");
  static_assert(2 * kBlockN / 8 <= 32, "a row's dropout keep bits fit one uint32");
  // Shared memory: the Q tile, two buffers of (K tile, V tile) (tile j is computed in buffer j % 2 while tile j + 1
  // is copied into the other), and at D = 256 the warps' partial S, [warp][element][lane].
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* q_tile = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* kv_buffers = q_tile + kRows * D;
  float* s_exchange = reinterpret_cast<float*>(kv_buffers + 4 * kBlockN * D);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row_warp = warp % (kRows / 16), d0 = warp / (kRows / 16) * DO;  // the warp's 16 rows and columns
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads, hkv = h / (p.heads / p.kv_heads);
  const Sequence<kVarlen> seq = sequence<kVarlen>(p, b);
  // Causal CTAs with more rows do more work: start them first (x, the (batch, head) pairs, is scheduled fastest).
  const int m_block = p.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int m0 = m_block * kRows;
  if (m0 >= seq.sq) return;  // varlen: a sequence shorter than max_seqlen_q (the whole CTA leaves, before any barrier)

  const scalar_t* q = q_rows<scalar_t>(p, seq, h);
  const scalar_t* k = k_rows<scalar_t>(p, seq, hkv);
  const scalar_t* v = v_rows<scalar_t>(p, seq, hkv);
  const bool* padding = key_padding(p, seq);
  // Copies tile n0 of K and of V into buffer `buffer` (padding keys' rows zero-filled), one cp.async group each (K
  // first: S needs it first).
  const auto load_kv = [&](int buffer, int n0) {
    scalar_t* k_tile = kv_buffers + buffer * 2 * kBlockN * D;
    load_tile<scalar_t, D, kBlockN>(k_tile, k, p.k_stride[2], n0, seq.sk, padding, p.padding_stride[1]);
    cp_async_commit();
    load_tile<scalar_t, D, kBlockN>(k_tile + kBlockN * D, v, p.v_stride[2], n0, seq.sk, padding, p.padding_stride[1]);
    cp_async_commit();
  };

  load_tile<scalar_t, D, kRows>(q_tile, q, p.q_stride[2], m0, seq.sq);
  cp_async_commit();

  const int row_a = m0 + row_warp * 16 + g, row_b = row_a + 8;  // this thread's two query rows
  float o[DO / 8][4];
#pragma unroll
  for (int i = 0; i < DO / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  // Keys past the CTA's last row are hidden from all its rows (causal); tiles of padding only are skipped.
  const int n_end = p.causal ? min(seq.sk, m0 + kRows) : seq.sk;
  int n0 = next_key_tile<kBlockN>(p, seq, 0, n_end);
  if (n0 < n_end) load_kv(0, n0);
  // Pipeline: cp.async groups are committed in the order Q, K_0, V_0, K_1, V_1, ..., two per tile (empty ones after
  // the last tile), so "K_j has landed" is wait_group 1 (only V_j may be pending) at the top of step j, before
  // K_{j+1} and V_{j+1} are issued, and "V_j has landed" is wait_group 2 after them.
  for (int buffer = 0; n0 < n_end; buffer ^= 1) {
    const scalar_t* k_tile = kv_buffers + buffer * 2 * kBlockN * D;
    const scalar_t* v_tile = k_tile + kBlockN * D;
    cp_async_wait<1>();  // Q and K_j have landed (this thread's copies)
    __syncthreads();     // ... every thread's; and every thread is done with the other buffer (tile j - 1)
    const int n_next = next_key_tile<kBlockN>(p, seq, n0 + kBlockN, n_end);
    if (n_next < n_end) {
      load_kv(buffer ^ 1, n_next);  // prefetch tile j + 1 while this one is computed
    } else {
      cp_async_commit();  // two empty groups keep the count of the waits below
      cp_async_commit();
    }

    // S = Q K^T for this warp's 16 rows x kBlockN keys (at D = 256, its half of the dims).
    float s[kBlockN / 8][4];
#pragma unroll
    for (int i = 0; i < kBlockN / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
    for (int kk = d0; kk < d0 + DO; kk += 16) {
      uint32_t a[4];
      ldmatrix_x4(a, q_tile + swizzle<D>(row_warp * 16 + lane % 16, kk + (lane / 16) * 8));
#pragma unroll
      for (int nn = 0; nn < kBlockN; nn += 16) {
        uint32_t bk[4];  // b0, b1 of key tile nn, then of nn + 8
        ldmatrix_x4(bk, k_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
        mma<scalar_t>(s[nn / 8], a, bk[0], bk[1]);
        mma<scalar_t>(s[nn / 8 + 1], a, bk[2], bk[3]);
      }
    }

    if constexpr (kSplit > 1) {
      // D = 256: add the partner warp's half of the dot products (the two warps of a row group compute the same
      // sum, a + b and b + a, so the same softmax). The barrier also makes V_j visible (waited for here rather than
      // before P V: with the prefetch, it landed long ago).
      static_assert(kSplit == 2, "two warps per row group");
#pragma unroll
      for (int i = 0; i < kBlockN / 2; ++i) s_exchange[(warp * (kBlockN / 2) + i) * 32 + lane] = s[i / 4][i % 4];
      cp_async_wait<2>();  // V_j has landed (K_{j+1} and V_{j+1} may be pending)
      __syncthreads();
      const int partner = (warp + kRows / 16) % kWarps;
#pragma unroll
      for (int i = 0; i < kBlockN / 2; ++i) s[i / 4][i % 4] += s_exchange[(partner * (kBlockN / 2) + i) * 32 + lane];
    }

    // Scale to base 2, mask, and update the running max / sum.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half ? row_b : row_a;
      float block_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < kBlockN / 8; ++nt) {
        masked_score_pair<scalar_t, kMask, kVarlen>(p, seq, h, row, n0 + nt * 8 + 2 * t, s[nt][half * 2],
                                                    s[nt][half * 2 + 1]);
        block_max = max_nan(block_max, max_nan(s[nt][half * 2], s[nt][half * 2 + 1]));
      }
      block_max = max_nan(block_max, __shfl_xor_sync(0xffffffff, block_max, 1));
      block_max = max_nan(block_max, __shfl_xor_sync(0xffffffff, block_max, 2));
      const float new_max = max_nan(row_max[half], block_max);
      // Shift by 0 while the row has seen nothing visible, so exp2(-inf - shift) = 0 and never NaN. A NaN max (a
      // visible NaN score) makes the shift, alpha and every P of the row NaN from here on; a +inf max gives
      // exp2(inf - inf) = NaN for its element: both rows end NaN, as in SDPA.
      const float shift = new_max == -INFINITY ? 0.f : new_max;
      const float alpha = exp2f(row_max[half] - shift);
      row_max[half] = new_max;
      // Dropout keep bits of this thread's kBlockN / 4 elements of the row, in a rolled loop: Philox unrolled that
      // many times would spill.
      uint32_t keep = 0xffffffffu;
      if constexpr (kDropout) {
        keep = 0;
#pragma unroll 1
        for (int i = 0; i < 2 * kBlockN / 8; ++i) {
          const int col = n0 + (i / 2) * 8 + 2 * t + i % 2;
          keep |= static_cast<uint32_t>(row < seq.sq && col < seq.sk &&
                                        dropout_keep(dropout_seed(p), dropout_offset(p, seq, h, row, col), p.dropout_p)) << i;
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
      for (int i = 0; i < DO / 8; ++i) {
        o[i][half * 2] *= alpha;
        o[i][half * 2 + 1] *= alpha;
      }
    }

    if constexpr (kSplit == 1) {
      cp_async_wait<2>();  // V_j has landed (K_{j+1} and V_{j+1} may be pending)
      __syncthreads();
    }
    // O += P V: the S accumulators of key tiles (2kk, 2kk + 1) are exactly the A fragment of a 16-key k-step.
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<scalar_t>(s[2 * kk][0], s[2 * kk][1]);
      a[1] = pack2<scalar_t>(s[2 * kk][2], s[2 * kk][3]);
      a[2] = pack2<scalar_t>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      a[3] = pack2<scalar_t>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int nn = 0; nn < DO; nn += 16) {
        uint32_t bv[4];  // b0, b1 of dims d0 + nn .. d0 + nn + 7, then of d0 + nn + 8 .. d0 + nn + 15
        ldmatrix_x4_trans(bv,
                          v_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, d0 + nn + (lane / 16) * 8));
        mma<scalar_t>(o[nn / 8], a, bv[0], bv[1]);
        mma<scalar_t>(o[nn / 8 + 1], a, bv[2], bv[3]);
      }
    }
    n0 = n_next;
  }

  cp_async_wait<0>();  // no copy outlives the CTA (e.g. the Q tile when every key tile was skipped)

  // Finish: total row sums over the quad, normalise, write out and lse.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float sum = row_sum[half];
    sum += __shfl_xor_sync(0xffffffff, sum, 1);
    sum += __shfl_xor_sync(0xffffffff, sum, 2);
    const int row = half ? row_b : row_a;
    if (row >= seq.sq) continue;
    // A row with no visible key (max still -inf, sum 0) gives zeros and lse +inf; a NaN row gives NaN in both.
    const bool empty = row_max[half] == -INFINITY;
    const float inv = empty ? 0.f : p.keep_scale / sum;
    scalar_t* out = static_cast<scalar_t*>(p.out) + out_row(p, seq, h, row) * D + d0;
#pragma unroll
    for (int i = 0; i < DO / 8; ++i) {
      *reinterpret_cast<uint32_t*>(out + i * 8 + 2 * t) = pack2<scalar_t>(o[i][half * 2] * inv, o[i][half * 2 + 1] * inv);
    }
    if (t == 0 && d0 == 0) {
      p.lse[lse_index(p, seq, h, row)] =
          empty ? std::numeric_limits<float>::infinity() : (row_max[half] + log2f(sum)) * kLn2;
    }
  }
}

// --- host side --------------------------------------------------------------------------------------------------------

template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen = false>
void launch(const Params& p, cudaStream_t stream) {
  using Tiles = AttentionTiles<D>;
  const dim3 grid(p.batch * p.heads, (p.max_sq + Tiles::kForwardRows - 1) / Tiles::kForwardRows);
  const int exchange = Tiles::kForwardColumnSplit > 1 ? kThreads * Tiles::kForwardBlockN / 2 * 4 : 0;  // fp32
  const int smem =
      (Tiles::kForwardRows + 4 * Tiles::kForwardBlockN) * D * static_cast<int>(sizeof(scalar_t)) + exchange;
  launch_attention_kernel(attention_forward_kernel<scalar_t, D, kMask, kDropout, kVarlen>, grid, smem, D, p, stream);
}

}  // namespace

template <typename scalar_t, int D>
void launch_attention_forward_for(const Params& p, MaskKind mask, cudaStream_t stream) {
  const bool dropout = p.dropout_p > 0.f;
  if (p.spans_q != nullptr) {  // packed sequences: no mask
    TORCH_CHECK(mask == MaskKind::kNone, "attention on CUDA: packed sequences take no mask");
    dropout ? launch<scalar_t, D, MaskKind::kNone, true, true>(p, stream)
            : launch<scalar_t, D, MaskKind::kNone, false, true>(p, stream);
  } else if (mask == MaskKind::kNone) {
    dropout ? launch<scalar_t, D, MaskKind::kNone, true>(p, stream) : launch<scalar_t, D, MaskKind::kNone, false>(p, stream);
  } else if (mask == MaskKind::kBool) {
    dropout ? launch<scalar_t, D, MaskKind::kBool, true>(p, stream) : launch<scalar_t, D, MaskKind::kBool, false>(p, stream);
  } else {
    dropout ? launch<scalar_t, D, MaskKind::kAdditive, true>(p, stream)
            : launch<scalar_t, D, MaskKind::kAdditive, false>(p, stream);
  }
}

}  // namespace kernels
