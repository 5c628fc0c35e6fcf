// The fused masked attention backward kernels on CUDA tensor cores (mma.sync m16n8k16, sm_80+), fp16 and bf16, head
// dims 32, 64, 96, 128 and 256, deterministic (no atomics): three kernels, recomputing P = exp2(S - lse) from the forward's
// log-sum-exp. The same kernels serve packed sequences (csrc/cuda/varlen_attention.cu, Params::spans_q).
//   1. delta = rowsum(dO * O) per query row (fp32).
//   2. dK, dV: one CTA per (64-key block, b, kv head); each warp owns 16 keys and walks every query block of every
//      query head that shares the kv head (GQA), accumulating dV += P^T dO and dK += dS^T Q in fp32 registers, with
//      dS = P * (dP - delta), dP = dO V^T (dropout: P and dP pass through the keep-mask of the forward). At D = 256
//      the two accumulators do not fit together: two passes, one for dV and one for dK (AttentionTiles).
//   3. dQ: one CTA per (64-row query block, b, h), walking the key blocks: dQ += dS K (at D = 256 two CTAs per
//      block, each accumulating half of dQ's columns). K and V tiles are double-buffered: the copies of the next
//      step's tiles overlap this step's work, as in the forward.
// Key tiles that are all padding are skipped: by the dQ kernel step by step, and by the dK/dV kernel as a whole
// (a key block of padding only gets zero gradients without walking any query tile); the K / V rows of padding keys
// are zero-filled as they are loaded. A hidden key's score is -inf whatever q.k is, so P = 0 there in every finite
// row: a NaN in K at a masked key reaches no gradient through the scores (it can through dQ += dS K, 0 * NaN). In a
// NaN row (lse NaN) P and dS are NaN at every key of the row's tiles, as SDPA's math backend gives NaN dk / dv.
// The query rows per step of kernel 2 and the keys per step of kernel 3 shrink as D grows (AttentionTiles in
// attention_params.cuh), so nothing spills.
// Scores are computed transposed in kernel 2 (S^T = K Q^T), so the accumulators of P^T / dS^T are directly the A
// operands of the next products (the layout trick of the forward, attention_forward_kernel.cuh).
//
// Included by the files attention_backward_d<D>_<dtype>.cu, each instantiating launch_attention_backward_for for one
// dtype and head dim; the op itself is in attention_backward.cu.
#pragma once

#include "attention_common.cuh"

namespace kernels {
namespace {

// 1. delta[row] = sum_d dO[row, d] * O[row, d]: one warp per row of out (delta has out's row order).
template <typename scalar_t, int D>
__global__ void __launch_bounds__(kThreads) attention_delta_kernel(const Params p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= p.out_rows) return;
  const scalar_t* o = static_cast<const scalar_t*>(p.out) + row * D;
  const scalar_t* go = static_cast<const scalar_t*>(p.grad_out) + row * D;
  float sum = 0.f;
  for (int d = threadIdx.x % 32; d < D; d += 32) sum += to_float(o[d]) * to_float(go[d]);
  for (int shift = 16; shift > 0; shift /= 2) sum += __shfl_xor_sync(0xffffffff, sum, shift);
  if (threadIdx.x % 32 == 0) p.delta[row] = sum;
}

// Reads lse (natural log, +inf for empty rows) in base 2 for P = exp2(x - lse2); rows past the sequence give +inf
// (P = 0).
template <bool kVarlen>
__device__ __forceinline__ float lse_base2(const Params& p, const Sequence<kVarlen>& s, int h, int row) {
  return row < s.sq ? p.lse[lse_index(p, s, h, row)] * kLog2e : INFINITY;
}
template <bool kVarlen>
__device__ __forceinline__ float row_delta(const Params& p, const Sequence<kVarlen>& s, int h, int row) {
  return row < s.sq ? p.delta[out_row(p, s, h, row)] : 0.f;
}

// 2. dK and / or dV (kGrads).
template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen, KeyGrads kGrads>
__global__ void __launch_bounds__(kThreads, kMinBlocks) attention_backward_kv_kernel(const Params p) {
  constexpr int BQ = AttentionTiles<D>::kBackwardBlockQ;
  constexpr bool kDK = kGrads != KeyGrads::kValues, kDV = kGrads != KeyGrads::kKeys;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  scalar_t* k_tile = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* v_tile = k_tile + kBlockM * D;  // unused by the dV-only pass
  scalar_t* q_tile = v_tile + kBlockM * D;
  scalar_t* do_tile = q_tile + BQ * D;
  __shared__ float lse_s[BQ], delta_s[BQ];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.x / p.kv_heads, hkv = blockIdx.x % p.kv_heads, group = p.heads / p.kv_heads;
  const Sequence<kVarlen> seq = sequence<kVarlen>(p, b);
  const int n0 = blockIdx.y * kBlockM;
  if (n0 >= seq.sk) return;  // varlen: a sequence shorter than max_seqlen_k (the whole CTA leaves, before any barrier)
  const int key_a = n0 + warp * 16 + g, key_b = key_a + 8;  // this thread's two keys

  // Causality hides this key block from query rows < n0; when all its keys are padding, no query row sees them: the
  // CTA walks no query tile and writes zero gradients.
  int m_start = p.causal ? (n0 / BQ) * BQ : 0;
  if (p.padding != nullptr && !any_key_visible<kBlockM>(p, seq, n0)) m_start = seq.sq;
  if (m_start < seq.sq) {  // (no copy may outlive the CTA: none is issued when no step waits for it)
    const bool* padding = key_padding(p, seq);  // padding keys' K / V rows zero-filled: dP^T = 0 there, even for NaN
    load_tile<scalar_t, D, kBlockM>(k_tile, k_rows<scalar_t>(p, seq, hkv), p.k_stride[2], n0, seq.sk, padding,
                                    p.padding_stride[1]);
    if constexpr (kDK) {
      load_tile<scalar_t, D, kBlockM>(v_tile, v_rows<scalar_t>(p, seq, hkv), p.v_stride[2], n0, seq.sk, padding,
                                      p.padding_stride[1]);
    }
    cp_async_commit();
  }

  float dk[D / 8][4], dv[D / 8][4];  // the one a pass does not accumulate is dead code, removed by the compiler
#pragma unroll
  for (int i = 0; i < D / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.f;
  }

  for (int h = hkv * group; h < (hkv + 1) * group; ++h) {
    const scalar_t* q = q_rows<scalar_t>(p, seq, h);
    const scalar_t* go = static_cast<const scalar_t*>(p.grad_out) + out_row(p, seq, h, 0) * D;
    for (int m0 = m_start; m0 < seq.sq; m0 += BQ) {
      __syncthreads();  // the previous step's readers are done with q_tile / do_tile / lse_s / delta_s
      load_tile<scalar_t, D, BQ>(q_tile, q, p.q_stride[2], m0, seq.sq);
      load_tile<scalar_t, D, BQ>(do_tile, go, p.o_stride[2] * D, m0, seq.sq);
      cp_async_commit();
      for (int i = threadIdx.x; i < BQ; i += kThreads) {
        lse_s[i] = lse_base2(p, seq, h, m0 + i);
        if constexpr (kDK) delta_s[i] = row_delta(p, seq, h, m0 + i);
      }
      cp_async_wait<0>();
      __syncthreads();

      // S^T = K Q^T (this warp's 16 keys x BQ queries) and, for dK, dP^T = V dO^T.
      float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
      for (int i = 0; i < BQ / 8; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
      }
#pragma unroll
      for (int kk = 0; kk < D; kk += 16) {
        uint32_t ak[4], av[4];
        ldmatrix_x4(ak, k_tile + swizzle<D>(warp * 16 + lane % 16, kk + (lane / 16) * 8));
        if constexpr (kDK) ldmatrix_x4(av, v_tile + swizzle<D>(warp * 16 + lane % 16, kk + (lane / 16) * 8));
#pragma unroll
        for (int nn = 0; nn < BQ; nn += 16) {
          uint32_t bq[4], bo[4];
          ldmatrix_x4(bq, q_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
          mma<scalar_t>(s[nn / 8], ak, bq[0], bq[1]);
          mma<scalar_t>(s[nn / 8 + 1], ak, bq[2], bq[3]);
          if constexpr (kDK) {
            ldmatrix_x4(bo, do_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
            mma<scalar_t>(dp[nn / 8], av, bo[0], bo[1]);
            mma<scalar_t>(dp[nn / 8 + 1], av, bo[2], bo[3]);
          }
        }
      }
      // P^T, and dS^T = P^T * (dP^T - delta); with dropout, s becomes the dropped P^T (for dV).
      uint32_t keep = ~0u;
      if constexpr (kDropout) keep = dropout_keep_bits_transposed<BQ / 8>(p, seq, h, key_a, key_b, m0 + 2 * t);
#pragma unroll
      for (int nt = 0; nt < BQ / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = e < 2 ? key_a : key_b, qi = nt * 8 + 2 * t + e % 2, row = m0 + qi;
          const float x = masked_score<scalar_t, kMask, kVarlen>(p, seq, h, row, key, s[nt][e]);
          const float pr = exp2f(x - lse_s[qi]);  // 0 for hidden keys and rows past the sequence (lse +inf)
          float grad = dp[nt][e];
          s[nt][e] = pr;
          if constexpr (kDropout) {
            const bool kept = (keep >> (4 * nt + e)) & 1u;
            s[nt][e] = kept ? pr * p.keep_scale : 0.f;
            grad = kept ? grad * p.keep_scale : 0.f;
          }
          if constexpr (kDK) dp[nt][e] = pr * (grad - delta_s[qi]);
        }
      }
      // dV += P^T dO and dK += dS^T Q: the accumulators of query tiles (2kk, 2kk + 1) are the A fragment.
#pragma unroll
      for (int kk = 0; kk < BQ / 16; ++kk) {
        uint32_t ap[4], ads[4];  // (ads stays unused by the dV-only pass)
        ap[0] = pack2<scalar_t>(s[2 * kk][0], s[2 * kk][1]);
        ap[1] = pack2<scalar_t>(s[2 * kk][2], s[2 * kk][3]);
        ap[2] = pack2<scalar_t>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        ap[3] = pack2<scalar_t>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
        if constexpr (kDK) {
          ads[0] = pack2<scalar_t>(dp[2 * kk][0], dp[2 * kk][1]);
          ads[1] = pack2<scalar_t>(dp[2 * kk][2], dp[2 * kk][3]);
          ads[2] = pack2<scalar_t>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
          ads[3] = pack2<scalar_t>(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
        }
#pragma unroll
        for (int nn = 0; nn < D; nn += 16) {
          uint32_t bo[4], bq[4];
          if constexpr (kDV) {
            ldmatrix_x4_trans(bo, do_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, nn + (lane / 16) * 8));
            mma<scalar_t>(dv[nn / 8], ap, bo[0], bo[1]);
            mma<scalar_t>(dv[nn / 8 + 1], ap, bo[2], bo[3]);
          }
          if constexpr (kDK) {
            ldmatrix_x4_trans(bq, q_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, nn + (lane / 16) * 8));
            mma<scalar_t>(dk[nn / 8], ads, bq[0], bq[1]);
            mma<scalar_t>(dk[nn / 8 + 1], ads, bq[2], bq[3]);
          }
        }
      }
    }
  }
  // dK carries the softmax scale (S = scale * q.k); scale_log2 / log2(e) recovers it.
  const float scale = p.scale_log2 / kLog2e;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int key = half ? key_b : key_a;
    if (key >= seq.sk) continue;
    const int64_t at = key_grad_row(p, seq, hkv, key) * D;
    scalar_t* dk_row = static_cast<scalar_t*>(p.dk) + at;
    scalar_t* dv_row = static_cast<scalar_t*>(p.dv) + at;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
      if constexpr (kDK) {
        *reinterpret_cast<uint32_t*>(dk_row + i * 8 + 2 * t) =
            pack2<scalar_t>(dk[i][half * 2] * scale, dk[i][half * 2 + 1] * scale);
      }
      if constexpr (kDV) {
        *reinterpret_cast<uint32_t*>(dv_row + i * 8 + 2 * t) = pack2<scalar_t>(dv[i][half * 2], dv[i][half * 2 + 1]);
      }
    }
  }
}

// 3. dQ.
template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen>
__global__ void __launch_bounds__(kThreads, kDropout ? kMinBlocks : 0) attention_backward_q_kernel(const Params p) {
  constexpr int BN = AttentionTiles<D>::kBackwardBlockK;
  constexpr int DO = AttentionTiles<D>::kOutputCols;  // this CTA's columns of dQ: d0 .. d0 + DO - 1
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // Shared memory: the Q and dO tiles, then two buffers of (K tile, V tile): step j computes with buffer j % 2 while
  // the tiles of step j + 1 are copied into the other.
  scalar_t* q_tile = reinterpret_cast<scalar_t*>(smem_raw);
  scalar_t* do_tile = q_tile + kBlockM * D;
  scalar_t* kv_buffers = do_tile + kBlockM * D;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int b = blockIdx.x / p.heads, h = blockIdx.x % p.heads, hkv = h / (p.heads / p.kv_heads);
  const Sequence<kVarlen> seq = sequence<kVarlen>(p, b);
  const int m0 = blockIdx.y * kBlockM, d0 = blockIdx.z * DO;
  if (m0 >= seq.sq) return;  // varlen: a sequence shorter than max_seqlen_q (the whole CTA leaves, before any barrier)
  const int row_a = m0 + warp * 16 + g, row_b = row_a + 8;

  load_tile<scalar_t, D, kBlockM>(q_tile, q_rows<scalar_t>(p, seq, h), p.q_stride[2], m0, seq.sq);
  load_tile<scalar_t, D, kBlockM>(do_tile, static_cast<const scalar_t*>(p.grad_out) + out_row(p, seq, h, 0) * D,
                                  p.o_stride[2] * D, m0, seq.sq);
  cp_async_commit();
  const float lse2[2] = {lse_base2(p, seq, h, row_a), lse_base2(p, seq, h, row_b)};
  const float delta[2] = {row_delta(p, seq, h, row_a), row_delta(p, seq, h, row_b)};

  float dq[DO / 8][4];
#pragma unroll
  for (int i = 0; i < DO / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  const scalar_t* k = k_rows<scalar_t>(p, seq, hkv);
  const scalar_t* v = v_rows<scalar_t>(p, seq, hkv);
  const bool* padding = key_padding(p, seq);
  // Copies key tile n0 of K and V into buffer `buffer` (padding keys' rows zero-filled: dQ += dS K never meets a NaN
  // of theirs), one cp.async group (S and dP need both at once).
  const auto load_kv = [&](int buffer, int n0) {
    scalar_t* k_tile = kv_buffers + buffer * 2 * BN * D;
    load_tile<scalar_t, D, BN>(k_tile, k, p.k_stride[2], n0, seq.sk, padding, p.padding_stride[1]);
    load_tile<scalar_t, D, BN>(k_tile + BN * D, v, p.v_stride[2], n0, seq.sk, padding, p.padding_stride[1]);
    cp_async_commit();
  };
  // Keys past the CTA's last row are hidden from all its rows (causal); tiles of padding only are skipped.
  const int n_end = p.causal ? min(seq.sk, m0 + kBlockM) : seq.sk;
  int n0 = next_key_tile<BN>(p, seq, 0, n_end);
  if (n0 < n_end) load_kv(0, n0);
  // Pipeline: groups Q + dO, KV_0, KV_1, ...: at the top of step j only KV_j may be pending (KV_{j+1} is issued after
  // the barrier that also tells every thread is done with its buffer, read at step j - 1).
  for (int buffer = 0; n0 < n_end; buffer ^= 1) {
    const scalar_t* k_tile = kv_buffers + buffer * 2 * BN * D;
    const scalar_t* v_tile = k_tile + BN * D;
    cp_async_wait<0>();  // Q, dO and this step's K and V have landed (this thread's copies)
    __syncthreads();     // ... every thread's
    const int n_next = next_key_tile<BN>(p, seq, n0 + BN, n_end);
    if (n_next < n_end) load_kv(buffer ^ 1, n_next);  // prefetch step j + 1's tiles while this one is computed

    // S = Q K^T and dP = dO V^T (this warp's 16 rows x BN keys).
    float s[BN / 8][4], dp[BN / 8][4];
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = dp[i][e] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < D; kk += 16) {
      uint32_t aq[4], ao[4];
      ldmatrix_x4(aq, q_tile + swizzle<D>(warp * 16 + lane % 16, kk + (lane / 16) * 8));
      ldmatrix_x4(ao, do_tile + swizzle<D>(warp * 16 + lane % 16, kk + (lane / 16) * 8));
#pragma unroll
      for (int nn = 0; nn < BN; nn += 16) {
        uint32_t bk[4], bv[4];
        ldmatrix_x4(bk, k_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
        ldmatrix_x4(bv, v_tile + swizzle<D>(nn + lane % 8 + (lane / 16) * 8, kk + ((lane / 8) % 2) * 8));
        mma<scalar_t>(s[nn / 8], aq, bk[0], bk[1]);
        mma<scalar_t>(s[nn / 8 + 1], aq, bk[2], bk[3]);
        mma<scalar_t>(dp[nn / 8], ao, bv[0], bv[1]);
        mma<scalar_t>(dp[nn / 8 + 1], ao, bv[2], bv[3]);
      }
    }
    // dS = P * (dP - delta) (dP taken back through the dropout).
#pragma unroll
    for (int nt = 0; nt < BN / 8; ++nt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        masked_score_pair<scalar_t, kMask, kVarlen>(p, seq, h, half ? row_b : row_a, n0 + nt * 8 + 2 * t,
                                                    s[nt][2 * half], s[nt][2 * half + 1]);
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = e / 2, row = half ? row_b : row_a, col = n0 + nt * 8 + 2 * t + e % 2;
        const float pr = exp2f(s[nt][e] - lse2[half]);  // 0 for hidden keys (x = -inf) of a finite row
        float grad = dp[nt][e];
        if constexpr (kDropout) {  // unrolled: the dQ kernel has registers to spare (the dK/dV kernel does not)
          const bool keep = row < seq.sq && col < seq.sk &&
                            dropout_keep(dropout_seed(p), dropout_offset(p, seq, h, row, col), p.dropout_p);
          grad = keep ? grad * p.keep_scale : 0.f;
        }
        dp[nt][e] = pr * (grad - delta[half]);
      }
    }
    // dQ += dS K (columns d0 .. d0 + DO - 1)
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      uint32_t a[4];
      a[0] = pack2<scalar_t>(dp[2 * kk][0], dp[2 * kk][1]);
      a[1] = pack2<scalar_t>(dp[2 * kk][2], dp[2 * kk][3]);
      a[2] = pack2<scalar_t>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
      a[3] = pack2<scalar_t>(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
      for (int nn = 0; nn < DO; nn += 16) {
        uint32_t bk[4];
        ldmatrix_x4_trans(bk,
                          k_tile + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8, d0 + nn + (lane / 16) * 8));
        mma<scalar_t>(dq[nn / 8], a, bk[0], bk[1]);
        mma<scalar_t>(dq[nn / 8 + 1], a, bk[2], bk[3]);
      }
    }
    n0 = n_next;
  }
  cp_async_wait<0>();  // no copy outlives the CTA (the Q and dO tiles when every key tile was skipped)
  const float scale = p.scale_log2 / kLog2e;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = half ? row_b : row_a;
    if (row >= seq.sq) continue;
    scalar_t* dq_row = static_cast<scalar_t*>(p.dq) + out_row(p, seq, h, row) * D + d0;
#pragma unroll
    for (int i = 0; i < DO / 8; ++i) {
      *reinterpret_cast<uint32_t*>(dq_row + i * 8 + 2 * t) =
          pack2<scalar_t>(dq[i][half * 2] * scale, dq[i][half * 2 + 1] * scale);
    }
  }
}

// --- host side --------------------------------------------------------------------------------------------------------

template <typename scalar_t, int D, MaskKind kMask, bool kDropout, bool kVarlen = false>
void launch_backward(const Params& p, cudaStream_t stream) {
  using Tiles = AttentionTiles<D>;
  const int e = static_cast<int>(sizeof(scalar_t));
  launch_attention_kernel(attention_delta_kernel<scalar_t, D>, dim3((p.out_rows + kWarps - 1) / kWarps), 0, D, p,
                          stream);
  const dim3 kv_grid(p.batch * p.kv_heads, (p.max_sk + kBlockM - 1) / kBlockM);
  const int kv_smem = (2 * kBlockM + 2 * Tiles::kBackwardBlockQ) * D * e;
  if constexpr (Tiles::kSplitKeyGrads) {
    launch_attention_kernel(attention_backward_kv_kernel<scalar_t, D, kMask, kDropout, kVarlen, KeyGrads::kValues>,
                            kv_grid, kv_smem, D, p, stream);
    launch_attention_kernel(attention_backward_kv_kernel<scalar_t, D, kMask, kDropout, kVarlen, KeyGrads::kKeys>,
                            kv_grid, kv_smem, D, p, stream);
  } else {
    launch_attention_kernel(attention_backward_kv_kernel<scalar_t, D, kMask, kDropout, kVarlen, KeyGrads::kBoth>,
                            kv_grid, kv_smem, D, p, stream);
  }
  launch_attention_kernel(attention_backward_q_kernel<scalar_t, D, kMask, kDropout, kVarlen>,
                          dim3(p.batch * p.heads, (p.max_sq + kBlockM - 1) / kBlockM, Tiles::kOutputSplit),
                          (2 * kBlockM + 4 * Tiles::kBackwardBlockK) * D * e, D, p, stream);
}

}  // namespace

template <typename scalar_t, int D>
void launch_attention_backward_for(const Params& p, MaskKind mask, cudaStream_t stream) {
  const bool dropout = p.dropout_p > 0.f;
  if (p.spans_q != nullptr) {  // packed sequences: no mask
    TORCH_CHECK(mask == MaskKind::kNone, "attention on CUDA: packed sequences take no mask");
    dropout ? launch_backward<scalar_t, D, MaskKind::kNone, true, true>(p, stream)
            : launch_backward<scalar_t, D, MaskKind::kNone, false, true>(p, stream);
  } else if (mask == MaskKind::kNone) {
    dropout ? launch_backward<scalar_t, D, MaskKind::kNone, true>(p, stream)
            : launch_backward<scalar_t, D, MaskKind::kNone, false>(p, stream);
  } else if (mask == MaskKind::kBool) {
    dropout ? launch_backward<scalar_t, D, MaskKind::kBool, true>(p, stream)
            : launch_backward<scalar_t, D, MaskKind::kBool, false>(p, stream);
  } else {
    dropout ? launch_backward<scalar_t, D, MaskKind::kAdditive, true>(p, stream)
            : launch_backward<scalar_t, D, MaskKind::kAdditive, false>(p, stream);
  }
}

}  // namespace kernels
