// Fused CPU attention, forward, for few query rows per sequence (decoding: one new token, or a few, over a cache).
// The tiled kernel (attention_forward.cpp) packs each (sequence, key/value head)'s K and V into blocked buffers and
// allocates its scratch per call, which a decoding step (a handful of scores per head) cannot amortise. Here K and V
// are read in place, eight key rows at a time (bf16, or rows with a head-dim stride, converted to T as they are
// read), and every scratch array lives on the stack: no heap allocation besides the outputs.
//
// Work: a task is (sequence, key/value head, tile of up to kDecodeRows query rows); the rows of a tile are the
// (query head, query row) pairs of the heads that share the key/value head (GQA), so each key row read serves them
// all. Keys are taken in chunks of kDecodeKeys with the same online softmax, masks (mask_row) and NaN rule as the
// tiled kernel. Small calls run on the calling thread (no parallel region), others on torch's threads; every task
// runs the same arithmetic whatever thread takes it, so the result does not depend on the thread count.
#include <ATen/OpMathType.h>

#include <kernels/philox.h>

#include "attention_common.h"

namespace kernels {
namespace cpu_attention {
namespace {

constexpr int64_t kDecodeRows = 4;   // query rows per tile: their scores and outputs stay in L1
constexpr int64_t kDecodeKeys = 64;  // keys per chunk of the online softmax
// Up to this many multiply-adds (q k^T and p v) a call runs on the calling thread: a parallel region costs more.
constexpr int64_t kDecodeSerialWork = int64_t{1} << 17;

constexpr int kDecodeGroup = 8;     // key rows per group: one vector of 8 fp32 scores

#if defined(__AVX__)
// out[t] = the sum of the lanes of acc[t], t < 8: a transposing tree of horizontal adds (9 instructions for eight
// sums, where one sum alone takes 5).
inline void lane_sums(const Vec<float>::type (&acc)[kDecodeGroup], float* out) {
  __m256 a[kDecodeGroup];
  std::memcpy(a, acc, sizeof(a));
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  // per 128-bit half: the partial sums of a0..a3 (u0) and a4..a7 (u1) over that half's lanes
  const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
}
#endif

template <typename T>
inline void lane_sums(const typename Vec<T>::type (&acc)[kDecodeGroup], T* out) {
  for (int t = 0; t < kDecodeGroup; ++t) {
    T sum = acc[t][0];
    for (int l = 1; l < Vec<T>::kWidth; ++l) sum += acc[t][l];
    out[t] = sum;
  }
}

// A key or value row as n (a multiple of the vector width, >= dim) elements of T: in place when the tensor holds T
// with unit stride and no padding is needed, else converted into `scratch` (zero padded).
template <typename T, typename scalar_t>
inline const T* row_as(const scalar_t* src, int64_t stride_d, int64_t dim, int64_t n, bool in_place, T* scratch) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    if (in_place) return src;
  }
  for (int64_t d = 0; d < dim; ++d) scratch[d] = static_cast<T>(src[d * stride_d]);
  std::fill(scratch + dim, scratch + n, T(0));
  return scratch;
}

template <typename scalar_t>
void decode_tile(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                 at::Tensor& lse, int64_t si, int64_t hkv, int64_t first_row, int64_t rows) {
  using T = at::opmath_type<scalar_t>;
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const Sequence& seq = p.seqs[si];
  const int64_t dim = p.dim, dv = round_up(dim, W);
  const T scale2 = static_cast<T>(p.scale * kLog2e);
  const float drop = static_cast<float>(p.dropout_p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p.dropout_p));

  // Row r of the tile: query head h[r], query row i[r] (within the sequence); its query (dv, zero padded) in qt.
  alignas(64) T qt[kDecodeRows * kDecodeMaxDim];
  alignas(64) T o[kDecodeRows * kDecodeMaxDim];
  alignas(64) T s[kDecodeRows * kDecodeKeys];
  alignas(64) T kv_rows[kDecodeGroup * kDecodeMaxDim];  // key or value rows converted to T
  alignas(64) T bias[kDecodeKeys];
  int64_t h[kDecodeRows], i[kDecodeRows];
  Masks masks[kDecodeRows];
  T m[kDecodeRows], l[kDecodeRows];
  int64_t last_key = 0;  // the keys any row of the tile may see: [0, last_key)
  for (int64_t r = 0; r < rows; ++r) {
    h[r] = hkv * p.group() + (first_row + r) / seq.q_len;
    i[r] = (first_row + r) % seq.q_len;
    masks[r] = p.masks(seq, h[r]);
    pack_rows<T, scalar_t>(q, seq.batch, h[r], seq.q_begin + i[r], 1, dim, dv, qt + r * dv);
    std::fill(o + r * dv, o + (r + 1) * dv, T(0));
    m[r] = kNegInf;
    l[r] = T(0);
    last_key = std::max(last_key, p.causal ? std::min(seq.k_len, i[r] + 1) : seq.k_len);
  }

  // The key and value rows of this (sequence, head) pair: row j at base + j * stride_s (tensor calls hoisted: each
  // costs more than a key's dot product).
  const scalar_t* k_base = row_ptr<scalar_t>(k, seq.batch, hkv, seq.k_begin);
  const scalar_t* v_base = row_ptr<scalar_t>(v, seq.batch, hkv, seq.k_begin);
  const int64_t k_stride_s = k.stride(2), k_stride_d = k.stride(3), v_stride_s = v.stride(2), v_stride_d = v.stride(3);
  const bool k_in_place = std::is_same_v<T, scalar_t> && k_stride_d == 1 && dim == dv;
  const bool v_in_place = std::is_same_v<T, scalar_t> && v_stride_d == 1 && dim == dv;
  const bool* padding =
      p.padding.has_value() ? p.padding->const_data_ptr<bool>() + seq.batch * p.padding->stride(0) : nullptr;
  const int64_t padding_stride = p.padding.has_value() ? p.padding->stride(1) : 0;
  for (int64_t k0 = 0; k0 < last_key; k0 += kDecodeKeys) {
    const int64_t n = std::min(kDecodeKeys, last_key - k0), width = round_up(n, panel<T>());
    // s = q k^T for keys k0 + [0, n), in groups of kDecodeGroup keys: each key row read once for every row of the
    // tile, eight dot products per row summed across lanes together. A group past n repeats its first key (scores
    // past n are never read: mask_row and plain rows stop at the sequence's visible keys).
    for (int64_t j0 = 0; j0 < n; j0 += kDecodeGroup) {
      const T* key[kDecodeGroup];
      for (int t = 0; t < kDecodeGroup; ++t) {
        const int64_t j = k0 + j0 + (j0 + t < n ? t : 0);
        key[t] = row_as<T>(k_base + j * k_stride_s, k_stride_d, dim, dv, k_in_place, kv_rows + t * dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        V acc[kDecodeGroup] = {};
        for (int64_t d = 0; d < dv; d += W) {
          const V x = load(qt + r * dv + d);
          for (int t = 0; t < kDecodeGroup; ++t) acc[t] += x * load(key[t] + d);
        }
        lane_sums(acc, s + r * kDecodeKeys + j0);
      }
    }
    if (padding != nullptr) {
      for (int64_t j = 0; j < n; ++j) bias[j] = padding[(seq.k_begin + k0 + j) * padding_stride] ? kNegInf : T(0);
    }
    // Scale, mask and the online softmax per row, as the tiled kernel (attention_forward.cpp).
    for (int64_t r = 0; r < rows; ++r) {
      T* row = s + r * kDecodeKeys;
      const bool plain = plain_row(i[r], k0, width, seq.k_len, padding != nullptr, scale2, masks[r]);
      const T block_max =
          plain ? row_max(row, width) * scale2
                : mask_row<T>(row, width, i[r], k0, scale2, padding != nullptr ? bias : nullptr, seq.k_len, masks[r]);
      if (block_max == kNegInf && !any_nan(row, width)) {
        std::fill(row, row + width, T(0));
        continue;
      }
      const T m_new = std::max(m[r], block_max);
      const T alpha = std::exp2(m[r] - m_new);
      l[r] = l[r] * alpha + exp2_scaled(row, width, plain ? scale2 : T(1), m_new);
      m[r] = m_new;
      if (alpha != T(1)) {
        for (int64_t d = 0; d < dv; ++d) o[r * dv + d] *= alpha;
      }
      if (drop > 0.f) {
        for (int64_t j = 0; j < n; ++j) {
          if (!dropout_keep(p.seed, p.dropout_offset(seq, h[r], i[r], k0 + j), drop)) row[j] = T(0);
        }
      }
    }
    // o += p v, in groups of kDecodeGroup value rows: each read once for every row of the tile, the row's output
    // kept in a register across the group.
    for (int64_t j0 = 0; j0 < n; j0 += kDecodeGroup) {
      const int group = static_cast<int>(std::min<int64_t>(kDecodeGroup, n - j0));
      const T* value[kDecodeGroup];
      for (int t = 0; t < group; ++t) {
        value[t] = row_as<T>(v_base + (k0 + j0 + t) * v_stride_s, v_stride_d, dim, dv, v_in_place, kv_rows + t * dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T* weight = s + r * kDecodeKeys + j0;
        for (int64_t d = 0; d < dv; d += W) {
          V acc = load(o + r * dv + d);
          for (int t = 0; t < group; ++t) acc += weight[t] * load(value[t] + d);
          store(o + r * dv + d, acc);
        }
      }
    }
  }
  // Normalise and write, as the tiled kernel: a row with no visible key gives zeros and lse = +inf; a NaN sum a NaN
  // row and lse.
  for (int64_t r = 0; r < rows; ++r) {
    const T inv = l[r] != T(0) ? keep_scale / l[r] : T(0);
    unpack_rows<T, scalar_t>(o + r * dv, dv, 1, dim, inv, out, seq.batch, h[r], seq.q_begin + i[r]);
    lse.mutable_data_ptr<T>()[seq.batch * lse.stride(0) + h[r] * lse.stride(1) + (seq.q_begin + i[r]) * lse.stride(2)] =
        l[r] != T(0) ? (m[r] + std::log2(l[r])) * static_cast<T>(kLn2) : std::numeric_limits<T>::infinity();
  }
}

}  // namespace

// Reading K and V in place beats packing them while the rows that share a key/value head (GQA group x query rows)
// fit in two tiles: beyond that each tile reads every key again, and the tiled kernel's packed blocks and BLAS
// products win once the keys outnumber a chunk (measured, 1 thread: 32 rows over 128 keys 1.4x slower here, 8 rows
// over 1024 keys 0.77x the tiled kernel's time; benchmarks/NOTES.md).
bool use_decode_kernel(const Problem& p) {
  if (p.max_q > kDecodeQueries || p.dim > kDecodeMaxDim) return false;
  if (p.group() * p.max_q <= 2 * kDecodeRows) return true;
  for (const Sequence& seq : p.seqs) {
    if (seq.k_len > kDecodeKeys) return false;
  }
  return true;
}

template <typename scalar_t>
void decode_kernel(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                   at::Tensor& lse) {
  const int64_t seqs = static_cast<int64_t>(p.seqs.size());
  const int64_t tiles = (p.group() * p.max_q + kDecodeRows - 1) / kDecodeRows;
  const int64_t tasks = seqs * p.kv_heads * tiles;
  if (tasks == 0 || p.max_q == 0) return;
  const auto run = [&](int64_t task) {
    const int64_t tile = task % tiles, pair = task / tiles;
    const int64_t si = pair / p.kv_heads, hkv = pair % p.kv_heads;
    const int64_t rows_of_pair = p.group() * p.seqs[si].q_len;
    const int64_t first = tile * kDecodeRows, rows = std::min(kDecodeRows, rows_of_pair - first);
    if (rows > 0) decode_tile<scalar_t>(p, q, k, v, out, lse, si, hkv, first, rows);
  };
  // Small calls stay on this thread (a parallel region costs ~20 us); larger ones take tasks from a shared counter
  // (parallel_tasks, as the tiled kernel), so that sequences of unequal lengths stay balanced.
  int64_t max_keys = 0;  // the work of a task is at most 2 * kDecodeRows * max_keys * dim multiply-adds
  for (const Sequence& seq : p.seqs) max_keys = std::max(max_keys, seq.k_len);
  if (tasks * 2 * kDecodeRows * max_keys * p.dim <= kDecodeSerialWork) {
    for (int64_t task = 0; task < tasks; ++task) run(task);
    return;
  }
  parallel_tasks(tasks, [&] { return run; });
}

template void decode_kernel<float>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);
template void decode_kernel<double>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);
template void decode_kernel<c10::BFloat16>(const Problem&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace cpu_attention
}  // namespace kernels
