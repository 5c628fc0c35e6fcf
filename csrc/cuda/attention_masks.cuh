// The rows a CTA of the CUDA attention kernels works on (part of attention_common.cuh, which includes it): dense batch
// entries and packed (varlen) sequences, their addressing, the mask logic (causality, bool and additive masks, key
// padding, NaN propagation) and the dropout keep bits.
#pragma once

#include <kernels/philox.h>

#include <cstdint>

#include "attention_ptx.cuh"

namespace kernels {
namespace {

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

}  // namespace
}  // namespace kernels
