// The fused masked attention forward kernel on CUDA tensor cores (mma.sync m16n8k16, sm_80+), fp16 and bf16, head dims 32, 64,
// 96, 128 and 256. Semantics and layouts as in csrc/cpu/attention.cpp (the schema comment in csrc/ops.cpp): out
// (B, H, Sq, D) contiguous, lse (B, H, Sq) fp32 (+inf for rows with no visible key), masks combined here and read
// through strides. The same kernel serves packed sequences (csrc/cuda/varlen_attention.cu, Params::spans_q).
//
// One CTA = 4 warps = 64 query rows (16 per warp) of one (b, h); it walks the keys in tiles of
// AttentionTiles<D>::kForwardBlockN keys (128 at D = 32, 64 at D = 64 to 128, 16 at D = 256; attention_common.cuh
// says why; at D = 256 two CTAs share the rows, each writing half of O's columns). K and V tiles are brought to shared memory with cp.async (16-byte chunks, XOR-swizzled by row so
// ldmatrix is conflict free), the V load overlapping S = Q K^T and the softmax. Scores live in registers in the mma
// accumulator layout: thread (g = lane / 4, t = lane % 4) of a warp holds rows g and g + 8, columns 2t and 2t + 1 of
// every 8-column tile.
// Online softmax in base 2 (scores pre-multiplied by scale * log2 e) with fp32 running max and sum per row, reduced
// across the 4 threads of a row with shuffles. P is rounded to the input dtype and fed back as the A operand of
// O += P V; O accumulates in fp32 registers. Key tiles that causality or the key padding hides from the whole CTA are
// skipped.
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
  constexpr int kBlockN = AttentionTiles<D>::kForwardBlockN;
  constexpr int DO = AttentionTiles<D>::kOutputCols;  // this CTA's columns of O: d0 .. d0 + DO - 1
  static_assert(kBlockN % 16 == 0 && kBlockN <= kThreads, "one thread per key in the padding test");
  static_assert(2 * kBlockN / 8 <= 32, "a row's dropout keep bits fit one uint32");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* q_tile = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* k_tile = q_tile + kBlockM * D;
  scalar_t* v_tile = k_tile + kBlockN * D;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads, hkv = h / (p.heads / p.kv_heads);
  const Sequence<kVarlen> seq = sequence<kVarlen>(p, b);
  // Causal CTAs with more rows do more work: start them first (x, the (batch, head) pairs, is scheduled fastest).
  const int m_block = p.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int m0 = m_block * kBlockM, d0 = blockIdx.z * DO;
  if (m0 >= seq.sq) return;  // varlen: a sequence shorter than max_seqlen_q (the whole CTA leaves, before any barrier)

  const scalar_t* q = q_rows<scalar_t>(p, seq, h);
  const scalar_t* k = k_rows<scalar_t>(p, seq, hkv);
  const scalar_t* v = v_rows<scalar_t>(p, seq, hkv);

  load_tile<scalar_t, D, kBlockM>(q_tile, q, p.q_stride[2], m0, seq.sq);
  cp_async_commit();

  const int row_a = m0 + warp * 16 + g, row_b = row_a + 8;  // this thread's two query rows
  float o[DO / 8][4];
#pragma unroll
  for (int i = 0; i < DO / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  int n_end = seq.sk;
  if (p.causal) n_end = min(n_end, m0 + kBlockM);  // keys past the CTA's last row are hidden from all its rows
  for (int n0 = 0; n0 < n_end; n0 += kBlockN) {
    if (p.padding != nullptr) {  // skip a tile whose keys are all padding
      const int j = n0 + threadIdx.x;
      const bool visible = threadIdx.x < kBlockN && j < seq.sk &&
                           !p.padding[b * p.padding_stride[0] + j * p.padding_stride[1]];
      if (!__syncthreads_or(visible)) continue;
    }
    __syncthreads();  // the previous tile's readers are done with k_tile / v_tile
    load_tile<scalar_t, D, kBlockN>(k_tile, k, p.k_stride[2], n0, seq.sk);
    cp_async_commit();
    load_tile<scalar_t, D, kBlockN>(v_tile, v, p.v_stride[2], n0, seq.sk);
    cp_async_commit();
    cp_async_wait<1>();  // Q and K have landed; V may still be in flight
    __syncthreads();

    // S = Q K^T for this warp's 16 rows x kBlockN keys.
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
          const float x = masked_score<scalar_t, kMask, kVarlen>(p, seq, h, row, col, s[nt][half * 2 + e]);
          s[nt][half * 2 + e] = x;
          block_max = max_nan(block_max, x);
        }
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
      for (int nn = 0; nn < DO; nn += 16) {
        uint32_t bv[4];  // b0, b1 of dims d0 + nn .. d0 + nn + 7, then of d0 + nn + 8 .. d0 + nn + 15
        ldmatrix_x4_trans(bv,
                          v_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, d0 + nn + (lane / 16) * 8));
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
    if (row >= seq.sq) continue;
    // A row with no visible key (max still -inf, sum 0) gives zeros and lse +inf; a NaN row gives NaN in both.
    const bool empty = row_max[half] == -INFINITY;
    const float inv = empty ? 0.f : p.keep_scale / sum;
    scalar_t* out = static_cast<scalar_t*>(p.out) + out_row(p, seq, h, row) * D + d0;
#pragma unroll
    for (int i = 0; i < DO / 8; ++i) {
      *reinterpret_cast<uint32_t*>(out + i * 8 + 2 * t) = pack2<scalar_t>(o[i][half * 2] * inv, o[i][half * 2 + 1] * inv);
    }
    if (t == 0 && blockIdx.z == 0) {
      p.lse[lse_index(p, seq, h, row)] =
          empty ? std::numeric_limits<float>::infinity() : (row_max[half] + log2f(sum)) * kLn2;
    }
  }
}

// --- host side --------------------------------------------------------------------------------------------------------

template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen = false>
void launch(const Params& p, cudaStream_t stream) {
  const dim3 grid(p.batch * p.heads, (p.max_sq + kBlockM - 1) / kBlockM, AttentionTiles<D>::kOutputSplit);
  const int smem = (kBlockM + 2 * AttentionTiles<D>::kForwardBlockN) * D * static_cast<int>(sizeof(scalar_t));
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
