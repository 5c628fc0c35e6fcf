// Fused CPU attention, backward: the forward's probabilities recomputed per tile from the saved log-sum-exp
// (layouts, masks and the work split: attention_common.h).
#include <ATen/OpMathType.h>

#include <kernels/philox.h>

#include "attention_common.h"

namespace kernels {
namespace cpu_attention {

template <typename scalar_t>
void backward_kernel(Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv) {
  using T = at::opmath_type<scalar_t>;
  const int64_t dp = p.dim_padded, group = p.group();
  const int64_t seqs = static_cast<int64_t>(p.seqs.size());
  Buffer<T> bias;
  p.find_key_ranges(bias);
  const T scale = static_cast<T>(p.scale), scale2 = static_cast<T>(p.scale * kLog2e);
  const float drop = static_cast<float>(p.dropout_p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p.dropout_p));

  // Tasks: (key chunk, sequence, key/value head), the first chunks (the most queries under causality) and the
  // largest sequences (p.order) first. A task owns the dK and dV of its chunk of key blocks. With one chunk it also
  // owns the dQ of the query heads it serves; with several, each adds the dQ its keys contribute into a partial sum of
  // its own, and the partial sums are added in chunk order after all tasks: either way no two tasks write the same
  // element and the result does not depend on the thread count. Keys are split (chunks of >= 4 blocks) only when
  // there are fewer than kMinTasks (sequence, key/value head) pairs, e.g. one long sequence of one key/value head,
  // and the partial sums stay within kPartialBytes.
  const int64_t pairs = seqs * p.kv_heads;
  if (pairs == 0) return;
  const int64_t key_blocks = p.max_padded_keys() / kBlockK;
  const int64_t partial_elements = q.size(0) * p.heads * p.sq_total * dp;  // one chunk's partial dQ
  const int64_t chunks = std::max<int64_t>(
      1, std::min({(kMinTasks + pairs - 1) / pairs, key_blocks / 4,
                   kPartialBytes / std::max<int64_t>(partial_elements * static_cast<int64_t>(sizeof(T)), 1)}));
  const int64_t chunk_blocks = std::max<int64_t>((key_blocks + chunks - 1) / chunks, 1);
  Buffer<T> dq_partial(chunks > 1 ? chunks * partial_elements : 0);  // (chunks, B', H, S', Dp), zeros, unscaled
  const auto partial_row = [&](int64_t chunk, const Sequence& seq, int64_t h, int64_t row) {
    return dq_partial.data() + (((chunk * q.size(0) + seq.batch) * p.heads + h) * p.sq_total + row) * dp;
  };
  const int64_t kd = p.max_padded_keys() * dp;
  parallel_tasks(chunks * pairs, [&] {
    return [&, kr = Buffer<T>(kd), kt = Buffer<T>(kd), vt = Buffer<T>(kd), dkb = Buffer<T>(kd),
            dvb = Buffer<T>(kd), qt = Buffer<T>(kBackwardRows * dp), dot = Buffer<T>(kBackwardRows * dp),
            ob = Buffer<T>(kBackwardRows * dp), dqb = Buffer<T>(kBackwardRows * dp),
            delta = Buffer<T>(kBackwardRows), s = Buffer<T>(kBackwardRows * kBlockK),
            dpm = Buffer<T>(kBackwardRows * kBlockK),
            st = Buffer<T>(kBlockK * kBackwardRows)](int64_t task) mutable {
      const int64_t chunk = task / pairs, pair = task % pairs;
      const int64_t si = p.order[pair / p.kv_heads], hkv = pair % p.kv_heads;
      const Sequence& seq = p.seqs[si];
      const int64_t kb_begin = chunk * chunk_blocks;
      const int64_t kb_end = std::min((chunk + 1) * chunk_blocks, round_up(seq.k_len, kBlockK) / kBlockK);
      if (kb_begin >= kb_end && chunk > 0) return;  // chunk 0 runs even without keys: it writes the zero gradients
      const int64_t k_lo = kb_begin * kBlockK, k_hi = std::min(seq.k_len, kb_end * kBlockK);
      // Every key of the sequence in one tile (Sk <= kBlockK) and no dropout: each row's P and dP are at hand at once,
      // so D is summed from them (sum_j P_j dP_j over P / sum(P), the reference's softmax backward) instead of
      // dO . O. The two are equal in exact arithmetic, but dP_j - D then cancels to rounding where a row's probability
      // sits on one key (dS of Sk = 1 comes out 0 or a few ulps), where dO . O and the GEMM's dP_j differ by their own
      // rounding (|dO| |v| ulps, as in torch's CPU SDPA). Longer rows keep D = dO . O, computed before the key loop.
      const bool one_tile = chunks == 1 && kb_end - kb_begin == 1 && drop == 0.f;
      pack_keys<T, scalar_t>(k, seq, hkv, p, kb_begin, kb_end, kr.data(), kt.data());
      pack_keys<T, scalar_t>(v, seq, hkv, p, kb_begin, kb_end, nullptr, vt.data());
      std::fill(dkb.begin() + k_lo * dp, dkb.begin() + k_hi * dp, T(0));
      std::fill(dvb.begin() + k_lo * dp, dvb.begin() + k_hi * dp, T(0));
      for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
        const Masks masks = p.masks(seq, h);
        for (int64_t q0 = 0; q0 < seq.q_len; q0 += kBackwardRows) {
          const int64_t rows = std::min(kBackwardRows, seq.q_len - q0), row0 = seq.q_begin + q0;
          if (chunks > 1) {  // query blocks that see no key of this chunk add nothing to its partial sum
            bool sees = false;
            for (int64_t kb = kb_begin; kb < kb_end && !sees; ++kb) {
              sees = p.visible(si, kb, q0, rows, panel<T>()).width() > 0;
            }
            if (!sees) continue;
          }
          pack_rows<T, scalar_t>(q, seq.batch, h, row0, rows, p.dim, dp, qt.data());
          pack_rows<T, scalar_t>(grad_out, seq.batch, h, row0, rows, p.dim, dp, dot.data());
          const T* lse_row = lse.const_data_ptr<T>() + seq.batch * lse.stride(0) + h * lse.stride(1) +
                             row0 * lse.stride(2);
          const int64_t lse_stride = lse.stride(2);
          if (!one_tile) {
            pack_rows<T, scalar_t>(out, seq.batch, h, row0, rows, p.dim, dp, ob.data());
            for (int64_t r = 0; r < rows; ++r) delta[r] = dot_product(dot.data() + r * dp, ob.data() + r * dp, dp);
          }
          std::fill(dqb.begin(), dqb.end(), T(0));
          for (int64_t kb = kb_begin; kb < kb_end; ++kb) {
            const KeyRange keys = p.visible(si, kb, q0, rows, panel<T>());
            if (keys.width() == 0) continue;
            const int64_t k0 = kb * kBlockK + keys.lo, width = keys.width(), n = std::min(width, seq.k_len - k0);
            const int64_t off = k0 * dp;
            const bool needs_bias = !bias.empty() && !keys.clean;
            // P = 2^(scale2 * q k^T + mask - lse * log2 e): the forward's probabilities, recomputed.
            block_gemm<T>(rows, width, dp, qt.data(), dp, kt.data() + kb * kBlockK * dp + keys.lo, kBlockK, s.data(),
                          kBlockK, false);
            // dP_dropped = dO v^T
            block_gemm<T>(rows, width, dp, dot.data(), dp, vt.data() + kb * kBlockK * dp + keys.lo, kBlockK,
                          dpm.data(), kBlockK, false);
            for (int64_t r = 0; r < rows; ++r) {
              T* pr = s.data() + r * kBlockK;
              T* dr = dpm.data() + r * kBlockK;
              const bool plain = plain_row(q0 + r, k0, width, seq.k_len, needs_bias, scale2, masks);
              if (!plain) mask_row<T>(pr, width, q0 + r, k0, scale2, p.key_bias(bias, si, k0), seq.k_len, masks);
              // lse = +inf (no visible key) gives 0
              const T total = exp2_scaled(pr, width, plain ? scale2 : T(1),
                                          lse_row[r * lse_stride] * static_cast<T>(kLog2e));
              if (drop > 0.f) {
                // s row becomes the dropped probabilities (for dV), dP is taken back through the dropout.
                for (int64_t j = 0; j < n; ++j) {
                  const bool keep = dropout_keep(p.seed, p.dropout_offset(seq, h, q0 + r, k0 + j), drop);
                  const T pj = pr[j];
                  pr[j] = keep ? pj * keep_scale : T(0);
                  dr[j] = keep ? pj * (dr[j] * keep_scale - delta[r]) : pj * -delta[r];
                }
                for (int64_t j = n; j < width; ++j) dr[j] = T(0);
              } else {
                T renormalize = T(1);
                if (one_tile) {  // P / sum(P): out goes the saved lse's rounding; D = P . dP
                  renormalize = total > T(0) ? T(1) / total : T(1);  // a fully masked row keeps P = 0
                  delta[r] = renormalize * dot_product(pr, dr, width);
                }
                for (int64_t j = 0; j < width; ++j) dr[j] = renormalize * pr[j] * (dr[j] - delta[r]);  // dS
              }
            }
            // dV += P_dropped^T dO
            transpose(rows, width, s.data(), kBlockK, st.data(), kBackwardRows);
            block_gemm<T>(width, dp, rows, st.data(), kBackwardRows, dot.data(), dp, dvb.data() + off, dp, true);
            // dQ += dS k ; dK += dS^T q (the softmax scale is applied once at the end)
            block_gemm<T>(rows, dp, width, dpm.data(), kBlockK, kr.data() + off, dp, dqb.data(), dp, true);
            transpose(rows, width, dpm.data(), kBlockK, st.data(), kBackwardRows);
            block_gemm<T>(width, dp, rows, st.data(), kBackwardRows, qt.data(), dp, dkb.data() + off, dp, true);
          }
          if (chunks == 1) {
            unpack_rows<T, scalar_t>(dqb.data(), dp, rows, p.dim, scale, dq, seq.batch, h, row0);
          } else {
            std::copy(dqb.begin(), dqb.begin() + rows * dp, partial_row(chunk, seq, h, row0));
          }
        }
      }
      unpack_rows<T, scalar_t>(dkb.data() + k_lo * dp, dp, k_hi - k_lo, p.dim, scale, dk, seq.batch, hkv,
                               seq.k_begin + k_lo);
      unpack_rows<T, scalar_t>(dvb.data() + k_lo * dp, dp, k_hi - k_lo, p.dim, T(1), dv, seq.batch, hkv,
                               seq.k_begin + k_lo);
    };
  });
  if (chunks == 1) return;
  // dQ = scale * (the partial sums added in chunk order), per (sequence, head, query block).
  at::parallel_for(0, seqs * p.heads, 1, [&](int64_t begin, int64_t end) {
    Buffer<T> sum(kBackwardRows * dp);
    for (int64_t t = begin; t < end; ++t) {
      const Sequence& seq = p.seqs[t / p.heads];
      const int64_t h = t % p.heads;
      for (int64_t q0 = 0; q0 < seq.q_len; q0 += kBackwardRows) {
        const int64_t rows = std::min(kBackwardRows, seq.q_len - q0), row0 = seq.q_begin + q0;
        std::copy(partial_row(0, seq, h, row0), partial_row(0, seq, h, row0) + rows * dp, sum.begin());
        for (int64_t c = 1; c < chunks; ++c) {
          const T* part = partial_row(c, seq, h, row0);
          for (int64_t e = 0; e < rows * dp; ++e) sum[e] += part[e];
        }
        unpack_rows<T, scalar_t>(sum.data(), dp, rows, p.dim, scale, dq, seq.batch, h, row0);
      }
    }
  });
}

template void backward_kernel<float>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&);
template void backward_kernel<double>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&);
template void backward_kernel<c10::BFloat16>(Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace cpu_attention
}  // namespace kernels
