// Fused CPU attention, forward: flash style, one (query block x key block) tile at a time with an online softmax
// (layouts, masks and the work split: attention_common.h).
#include <ATen/OpMathType.h>

#include <kernels/philox.h>

#include "attention_common.h"

namespace kernels {
namespace cpu_attention {

template <typename scalar_t>
void forward_kernel(Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    at::Tensor& lse) {
  if (use_decode_kernel(p)) return decode_kernel<scalar_t>(p, q, k, v, out, lse);
  using T = at::opmath_type<scalar_t>;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t dp = p.dim_padded, query_blocks = p.query_blocks();
  const int64_t group = p.group(), seqs = static_cast<int64_t>(p.seqs.size());

  Buffer<T> bias;
  p.find_key_ranges(bias);
  const T scale2 = static_cast<T>(p.scale * kLog2e);
  const float drop = static_cast<float>(p.dropout_p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p.dropout_p));

  // Tasks: (chunk of query blocks, sequence, key/value head), the last chunks (the most keys under causality) and the
  // largest sequences (p.order) first.
  // A task packs the K and V of its (sequence, key/value head) into its thread's buffers (skipped when the thread's
  // previous task had the same pair) and runs its query blocks for every query head that shares them (GQA). The
  // query blocks are split into chunks only when there are too few pairs to keep the threads balanced.
  const int64_t pairs = seqs * p.kv_heads;
  if (pairs == 0 || query_blocks == 0) return;
  const int64_t chunks = std::clamp<int64_t>((2 * at::get_num_threads() + pairs - 1) / pairs, 1, query_blocks);
  const int64_t chunk_blocks = (query_blocks + chunks - 1) / chunks;
  const int64_t kd = p.max_padded_keys() * dp;
  parallel_tasks(chunks * pairs, [&] {
    // kt: K transposed (Dp x kBlockK per block); vb: V (kBlockK x Dp per block); in T.
    return [&, kt = Buffer<T>(kd), vb = Buffer<T>(kd), packed = int64_t{-1}, qt = Buffer<T>(kForwardRows * dp),
            s = Buffer<T>(kForwardRows * kBlockK), o = Buffer<T>(kForwardRows * dp), m = Buffer<T>(kForwardRows),
            l = Buffer<T>(kForwardRows)](int64_t task) mutable {
      const int64_t chunk = chunks - 1 - task / pairs, pair = task % pairs;
      const int64_t si = p.order[pair / p.kv_heads], hkv = pair % p.kv_heads;
      const Sequence& seq = p.seqs[si];
      const int64_t qb_end = std::min((chunk + 1) * chunk_blocks, round_up(seq.q_len, kForwardRows) / kForwardRows);
      if (chunk * chunk_blocks >= qb_end) return;
      if (packed != pair) {
        const int64_t blocks = round_up(seq.k_len, kBlockK) / kBlockK;
        pack_keys<T, scalar_t>(k, seq, hkv, p, 0, blocks, nullptr, kt.data());
        pack_keys<T, scalar_t>(v, seq, hkv, p, 0, blocks, vb.data(), nullptr);
        packed = pair;
      }
      for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
        const Masks masks = p.masks(seq, h);
        for (int64_t qb = chunk * chunk_blocks; qb < qb_end; ++qb) {
          const int64_t q0 = qb * kForwardRows, rows = std::min(kForwardRows, seq.q_len - q0);
          pack_rows<T, scalar_t>(q, seq.batch, h, seq.q_begin + q0, rows, p.dim, dp, qt.data());
          std::fill(o.begin(), o.end(), T(0));
          std::fill(m.begin(), m.end(), kNegInf);
          std::fill(l.begin(), l.end(), T(0));
          for (int64_t kb = 0; kb * kBlockK < seq.k_len; ++kb) {
            const KeyRange keys = p.visible(si, kb, q0, rows, panel<T>());
            if (keys.width() == 0) continue;
            const int64_t k0 = kb * kBlockK + keys.lo, width = keys.width();
            const int64_t at_key = kb * kBlockK * dp;
            const bool needs_bias = !bias.empty() && !keys.clean;
            // s = q k^T (rows x width, row stride kBlockK), then scale and mask.
            block_gemm<T>(rows, width, dp, qt.data(), dp, kt.data() + at_key + keys.lo, kBlockK, s.data(), kBlockK,
                          false);
            for (int64_t r = 0; r < rows; ++r) {
              T* row = s.data() + r * kBlockK;
              const bool plain = plain_row(q0 + r, k0, width, seq.k_len, needs_bias, scale2, masks);
              const T block_max = plain ? row_max(row, width) * scale2
                                        : mask_row<T>(row, width, q0 + r, k0, scale2, p.key_bias(bias, si, k0),
                                                      seq.k_len, masks);
              // Nothing visible in this block: p = 0. A max may have dropped a NaN score; such a row goes on (its NaN
              // reaches l and the output).
              if (block_max == kNegInf && !any_nan(row, width)) {
                std::fill(row, row + width, T(0));
                continue;
              }
              // Online softmax (base 2): rescale the running sum and output to the new maximum.
              const T m_new = std::max(m[r], block_max);
              const T alpha = std::exp2(m[r] - m_new);  // 0 when m[r] = -inf
              l[r] = l[r] * alpha + exp2_scaled(row, width, plain ? scale2 : T(1), m_new);
              m[r] = m_new;
              if (alpha != T(1)) {
                for (int64_t d = 0; d < dp; ++d) o[r * dp + d] *= alpha;
              }
              if (drop > 0.f) {  // the sum above is of the undropped probabilities
                const int64_t n = std::min(width, seq.k_len - k0);
                for (int64_t j = 0; j < n; ++j) {
                  if (!dropout_keep(p.seed, p.dropout_offset(seq, h, q0 + r, k0 + j), drop)) row[j] = T(0);
                }
              }
            }
            // o += p v (rows x Dp)
            block_gemm<T>(rows, dp, width, s.data(), kBlockK, vb.data() + at_key + keys.lo * dp, dp, o.data(), dp,
                          true);
          }
          // Normalise and write; rows with no visible key give zeros and lse = +inf (natural log units). A NaN sum
          // (a NaN or +inf score) gives a NaN row and lse: `l != 0`, not `l > 0`, which is false for NaN.
          T* lse_row = lse.mutable_data_ptr<T>() + seq.batch * lse.stride(0) + h * lse.stride(1) +
                       (seq.q_begin + q0) * lse.stride(2);
          for (int64_t r = 0; r < rows; ++r) {
            const T inv = l[r] != T(0) ? keep_scale / l[r] : T(0);
            for (int64_t d = 0; d < dp; ++d) o[r * dp + d] *= inv;
            lse_row[r * lse.stride(2)] =
                l[r] != T(0) ? (m[r] + std::log2(l[r])) * static_cast<T>(kLn2) : std::numeric_limits<T>::infinity();
          }
          unpack_rows<T, scalar_t>(o.data(), dp, rows, p.dim, T(1), out, seq.batch, h, seq.q_begin + q0);
        }
      }
    };
  });
}

template void forward_kernel<float>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);
template void forward_kernel<double>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);
template void forward_kernel<c10::BFloat16>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace cpu_attention
}  // namespace kernels
