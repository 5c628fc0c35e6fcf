// Fused masked attention on the CPU, flash style: scores are computed one (query block x key block) tile at a time
// with an online softmax, so no (Sq, Sk) matrix is ever stored. Dense calls (attention_forward/_backward) and packed
// sequences (varlen_attention_forward/_backward) share the kernels: a call is a list of sequences, each a range of
// query rows and key rows of the (B', H, S', D) tensors (dense: one per batch entry; varlen: one per pair of offsets
// of the (T, H, D) tensors viewed as (1, H, T, D)).
//
// Layouts: q (B, H, Sq, D), k and v (B, Hkv, Sk, D) read through their strides (any layout, no copy); out
// (B, H, Sq, D) contiguous in q's dtype; lse (B, H, Sq) = log-sum-exp of the scaled, masked scores per query row, in
// fp32 (fp64 for fp64 inputs), +inf for a row with no visible key (its output is zero and its gradients are zero).
// Varlen: (Tq, H, D) / (Tk, Hkv, D) tensors, out (Tq, H, D), lse (H, Tq).
// Masks, combined by the kernels and never expanded: `mask` is None or a bool (True = take part) or floating (added
// to the scaled scores) tensor viewed as (B, H, Sq, Sk) with stride-0 broadcast dimensions; `is_causal` hides key
// j > query i (top-left aligned, within each sequence); `key_padding_mask` is None or bool (B, Sk), True = padding.
// Dropout: keep element (b, h, i, j) when Philox(seed, ((b*H + h)*Sq + i)*Sk + j) >= p (kernels/philox.h, the same
// numbers as Triton's tl.rand; varlen: B = 1 and global row indices), kept probabilities scaled by 1 / (1 - p).
//
// Work skipped: each 128-key block is narrowed to the keys that take part (the first to the last unpadded key,
// widened to 16-key panels), and, under causality, to the keys its query tile sees; empty blocks are skipped.
//
// Numerics: inputs are converted to T = fp32 (fp64 for fp64) into blocked, zero-padded tiles; every product and
// the softmax run in T. Scores are kept in base-2 units (scale * log2 e folded into one multiply) so the exponential
// is a power of two: a vectorised polynomial for fp32 (exp2_scaled), std::exp2 for fp64. The fp32 tile products go
// to torch's CPU BLAS (block_gemm); fp64 uses a small register-blocked kernel on GCC/Clang vector types.
//
// Parallelism: torch's intra-op threads take tasks from a shared counter (parallel_tasks), the largest sequences
// first. The forward's tasks are (sequence, key/value head) pairs, split into chunks of query blocks when there are
// too few pairs for the threads; a task packs its K and V once and serves every query head that shares them (GQA).
// The backward's tasks are (sequence, key/value head) pairs, their keys split into chunks when there are few pairs
// (a fixed rule, not the thread count): a task owns the dK/dV of its keys and the dQ of the heads it serves, or with
// several chunks a partial dQ sum of its own, added in chunk order afterwards. No two tasks write the same element,
// and no result depends on the thread count.
//
// Decoding (a few query rows per sequence, attention_decode.cpp): packing K and V would cost more than the products,
// so that forward reads them in place, key row by key row, with its scratch on the stack; its tasks are (sequence,
// key/value head, tile of 4 query rows of the heads sharing it), and small calls stay on the calling thread.
//
// This header holds what the kernels share: the masks of a row, the call's sequences and key ranges (Problem), the
// packing of tiles and the task scheduler. attention_forward.cpp, attention_decode.cpp and attention_backward.cpp
// hold the kernels, attention.cpp the dense entry points, attention_varlen.cpp the packed-sequence ones.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>

#include "attention_tiles.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

namespace kernels {
namespace cpu_attention {

// Query rows per tile: the forward takes 128 (fewer, larger BLAS calls: measured ~1.2x over 64 on (4, 8, 512, 64)),
// the backward 64 (its transposed tiles and five products per tile fit the caches better: 128 measured ~0.8x).
constexpr int64_t kForwardRows = 128;
constexpr int64_t kBackwardRows = 64;
constexpr int64_t kBlockK = 128;  // keys per tile
// The backward splits each sequence's keys into chunks when there are fewer (sequence, key/value head) pairs than
// this (a fixed number: the split, and so the order of the dQ sums, must not depend on the thread count), keeping
// the chunks' partial dQ sums within kPartialBytes.
constexpr int64_t kMinTasks = 8;
constexpr int64_t kPartialBytes = int64_t{256} << 20;

// The masks of one (b, h) pair of a dense call, read through strides.
struct Masks {
  const void* mask = nullptr;  // at (b, h): element (i, j) at mask + i * stride_q + j * stride_k
  at::ScalarType mask_type = at::kBool;
  int64_t stride_q = 0, stride_k = 0;
  bool causal = false;
};

// The bools m[0 : W] widened to one integer lane each (0 or 1). AVX2 has the widening load; GCC's generic
// conversion of a byte vector compiles to a scalar insert per lane.
template <typename T>
inline typename Vec<T>::mask bool_lanes(const bool* m) {
  typename Vec<T>::mask lanes;
#if defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
    std::memcpy(&lanes, &wide, sizeof(lanes));
    return lanes;
  }
#endif
  typename Vec<T>::bytes b;
  std::memcpy(&b, m, sizeof(b));
  lanes = __builtin_convertvector(b, typename Vec<T>::mask);
  return lanes;
}

// s[0 : width] = scores of query row i against keys k0 + [0, width) (indices within the sequence), in base-2 units:
// scaled by scale2 = scale * log2 e; a padding key (`key_bias` < 0 when given: 0, or -inf), causality, the keys past
// `keys` (the sequence's length), a bool mask and a -inf in an additive mask *replace* the score by -inf (so a NaN or
// Inf there does not reach the row); other additive values are added (times log2 e).
// Returns the row's maximum. One vectorised pass over the visible keys when the mask is absent or is a unit-stride
// bool or T mask (the usual layouts); other masks (strided, or of another float type) are applied by a scalar pass.
template <typename T>
T mask_row(T* s, int64_t width, int64_t i, int64_t k0, T scale2, const T* key_bias, int64_t keys, const Masks& masks) {
  using V = typename Vec<T>::type;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  constexpr int W = Vec<T>::kWidth;
  const T log2e = static_cast<T>(kLog2e);
  int64_t valid = std::min(width, keys - k0);
  if (masks.causal) valid = std::min(valid, i + 1 - k0);
  valid = std::max<int64_t>(valid, 0);
  const char* mask_row_start =
      masks.mask == nullptr
          ? nullptr
          : static_cast<const char*>(masks.mask) +
                (i * masks.stride_q + k0 * masks.stride_k) * static_cast<int64_t>(at::elementSize(masks.mask_type));
  const bool vector_mask =
      masks.mask == nullptr ||
      (masks.stride_k == 1 && (masks.mask_type == at::kBool || masks.mask_type == c10::CppTypeToScalarType<T>::value));
  // x = scores of keys [j, j + W) scaled and biased; `apply(x, j)` adds the mask.
  const auto pass = [&](auto apply, auto apply_one) {
    V top = V{} + kNegInf;
    const int64_t full = valid / W * W;
    for (int64_t j = 0; j < full; j += W) {
      V x = load(s + j) * scale2;
      if (key_bias != nullptr) x = load(key_bias + j) < T(0) ? V{} + kNegInf : x;
      x = apply(x, j);
      store(s + j, x);
      top = top > x ? top : x;
    }
    T row_top = top[0];
    for (int l = 1; l < W; ++l) row_top = std::max(row_top, top[l]);
    for (int64_t j = full; j < valid; ++j) {
      T x = key_bias != nullptr && key_bias[j] < T(0) ? kNegInf : s[j] * scale2;
      s[j] = x = apply_one(x, j);
      row_top = std::max(row_top, x);
    }
    std::fill(s + valid, s + width, kNegInf);
    return row_top;
  };
  if (vector_mask) {
    if (masks.mask == nullptr) {
      return pass([](V x, int64_t) { return x; }, [](T x, int64_t) { return x; });
    }
    if (masks.mask_type == at::kBool) {  // keep where the mask is true: a select, no branch
      const bool* m = reinterpret_cast<const bool*>(mask_row_start);
      return pass(
          [&](V x, int64_t j) { return bool_lanes<T>(m + j) != 0 ? x : V{} + kNegInf; },
          [&](T x, int64_t j) { return m[j] ? x : kNegInf; });
    }
    const T* m = reinterpret_cast<const T*>(mask_row_start);  // additive, in natural-log units; -inf hides
    return pass(
        [&](V x, int64_t j) {
          const V add = load(m + j);
          return add == kNegInf ? V{} + kNegInf : x + add * log2e;
        },
        [&](T x, int64_t j) { return m[j] == kNegInf ? kNegInf : x + m[j] * log2e; });
  }
  pass([](V x, int64_t) { return x; }, [](T x, int64_t) { return x; });
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, masks.mask_type, "attention_mask", [&] {
    const scalar_t* m = reinterpret_cast<const scalar_t*>(mask_row_start);
    const int64_t st = masks.stride_k;
    for (int64_t j = 0; j < valid; ++j) {
      if constexpr (std::is_same_v<scalar_t, bool>) {
        s[j] = m[j * st] ? s[j] : kNegInf;  // a select: a random mask would mispredict a branch per hidden key
      } else {
        const T add = static_cast<T>(m[j * st]);
        s[j] = add == kNegInf ? kNegInf : s[j] + add * log2e;
      }
    }
  });
  return row_max(s, width);
}

// Whether query row i sees every key of k0 + [0, width) with no mask or padding bias (`needs_bias`: the range has
// padding keys): then the row keeps its raw products, its maximum is the raw maximum times scale2 (> 0), and the
// exponential applies the scale (one pass fewer).
inline bool plain_row(int64_t i, int64_t k0, int64_t width, int64_t keys, bool needs_bias, double scale2,
                      const Masks& masks) {
  return !needs_bias && masks.mask == nullptr && scale2 > 0 && k0 + width <= keys &&
         (!masks.causal || k0 + width <= i + 1);
}

// One attention problem of a call: batch entry b of a dense call, or one packed sequence of a varlen call. Its query
// rows are [q_begin, q_begin + q_len) of the sequence dimension of the (B', H, S', D) tensors at batch index `batch`
// (always 0 for varlen, whose (T, H, D) tensors are viewed as (1, H, T, D)); its keys [k_begin, k_begin + k_len).
struct Sequence {
  int64_t batch, q_begin, q_len, k_begin, k_len;
};

// The keys of one key block that take part, [lo, hi) within the block, widened to whole register panels; `clean`
// when every key of the range exists and is not padding (its rows need no padding bias).
struct KeyRange {
  int64_t lo = 0, hi = 0;
  bool clean = false;
  int64_t width() const { return hi - lo; }
};

// Everything the kernels need about one call.
struct Problem {
  int64_t heads, kv_heads, dim, dim_padded;
  int64_t sq_total, sk_total;  // the tensors' sequence dims: the Sq and Sk of the dropout counter
  int64_t max_q = 0;
  // Inline storage for the usual few sequences: a decoding step allocates nothing but its outputs.
  c10::SmallVector<Sequence, 8> seqs;
  c10::SmallVector<int64_t, 9> key_base;  // seqs + 1 offsets of each sequence's keys padded to whole blocks
  double scale, dropout_p;
  uint64_t seed;
  bool causal;
  std::optional<at::Tensor> mask, padding;  // dense calls only
  std::vector<KeyRange> ranges;  // per padded key block: the keys that take part (lo = hi: none)
  std::vector<int64_t> order;    // sequence indices, the most work (query rows x keys that take part) first

  int64_t group() const { return kv_heads > 0 ? heads / kv_heads : 1; }  // query heads per key/value head (GQA)
  int64_t query_blocks() const { return round_up(max_q, kForwardRows) / kForwardRows; }
  int64_t padded_keys() const { return key_base.back(); }
  int64_t max_padded_keys() const {
    int64_t longest = 0;
    for (size_t s = 0; s < seqs.size(); ++s) longest = std::max(longest, key_base[s + 1] - key_base[s]);
    return longest;
  }

  Masks masks(const Sequence& seq, int64_t h) const {
    Masks m;
    m.causal = causal;
    if (mask.has_value()) {
      const at::Tensor& t = *mask;
      m.mask = static_cast<const char*>(t.const_data_ptr()) +
               (seq.batch * t.stride(0) + h * t.stride(1)) * static_cast<int64_t>(t.element_size());
      m.mask_type = t.scalar_type();
      m.stride_q = t.stride(2);
      m.stride_k = t.stride(3);
    }
    return m;
  }

  // The key-padding bias of sequence s from key k0 on (0 or -inf per key), or null without a padding mask.
  template <typename T>
  const T* key_bias(const Buffer<T>& bias, int64_t s, int64_t k0) const {
    return bias.empty() ? nullptr : bias.data() + key_base[s] + k0;
  }

  // Per padded key block of each sequence: the keys that exist and are not padding, widened to panels of width
  // `panel`; and, with a padding mask, the per-key bias. A block whose keys are all padding gets an empty range.
  // Then the order the sequences' tasks are taken in: the largest first, so the threads finish together.
  template <typename T>
  void find_key_ranges(Buffer<T>& bias) {
    const int64_t width = panel<T>();
    ranges.assign(padded_keys() / kBlockK, KeyRange{});
    if (padding.has_value()) bias.assign(padded_keys(), -std::numeric_limits<T>::infinity());
    for (size_t s = 0; s < seqs.size(); ++s) {
      const Sequence& seq = seqs[s];
      const bool* pad =
          padding.has_value() ? padding->const_data_ptr<bool>() + seq.batch * padding->stride(0) : nullptr;
      const int64_t pad_stride = padding.has_value() ? padding->stride(1) : 0;
      for (int64_t k0 = 0; k0 < seq.k_len; k0 += kBlockK) {
        const int64_t n = std::min(kBlockK, seq.k_len - k0);
        int64_t first = n, last = -1;
        for (int64_t j = 0; j < n; ++j) {
          if (pad != nullptr && pad[(seq.k_begin + k0 + j) * pad_stride]) continue;
          first = std::min(first, j);
          last = j;
          if (pad != nullptr) bias[key_base[s] + k0 + j] = T(0);
        }
        KeyRange& range = ranges[(key_base[s] + k0) / kBlockK];
        if (last < 0) continue;
        range = KeyRange{first / width * width, round_up(last + 1, width), true};
        range.clean = range.hi <= n;
        for (int64_t j = range.lo; range.clean && j < range.hi; ++j) {
          range.clean = pad == nullptr || !pad[(seq.k_begin + k0 + j) * pad_stride];
        }
      }
    }
    std::vector<int64_t> work(seqs.size(), 0);
    for (size_t s = 0; s < seqs.size(); ++s) {
      for (int64_t b = key_base[s] / kBlockK; b < key_base[s + 1] / kBlockK; ++b) work[s] += ranges[b].width();
      work[s] *= seqs[s].q_len;
    }
    order.resize(seqs.size());
    std::iota(order.begin(), order.end(), int64_t{0});
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  }

  // The keys of block (s, kb) that query rows [q0, q0 + rows) of the sequence may see (empty: skip the block).
  KeyRange visible(int64_t s, int64_t kb, int64_t q0, int64_t rows, int64_t width) const {
    KeyRange r = ranges[key_base[s] / kBlockK + kb];
    if (causal) r.hi = std::min(r.hi, round_up(std::max<int64_t>(q0 + rows - kb * kBlockK, 0), width));
    if (r.hi <= r.lo) r = KeyRange{};
    return r;
  }

  // Philox counter of element (i, j) of head h of sequence seq (i, j within the sequence).
  uint64_t dropout_offset(const Sequence& seq, int64_t h, int64_t i, int64_t j) const {
    return static_cast<uint64_t>(((seq.batch * heads + h) * sq_total + seq.q_begin + i) * sk_total + seq.k_begin + j);
  }
};

// Element (b, h, row) of a (B', H, S', D) tensor (any strides): a pointer to its head-dim vector.
template <typename scalar_t>
inline const scalar_t* row_ptr(const at::Tensor& x, int64_t b, int64_t h, int64_t row) {
  return x.const_data_ptr<scalar_t>() + b * x.stride(0) + h * x.stride(1) + row * x.stride(2);
}

template <typename scalar_t>
inline scalar_t* mutable_row_ptr(at::Tensor& x, int64_t b, int64_t h, int64_t row) {
  return x.mutable_data_ptr<scalar_t>() + b * x.stride(0) + h * x.stride(1) + row * x.stride(2);
}

// rows x dim of a (B', H, S', D) tensor at (b, h, row0) -> dst (rows x ld, zero padding), converted to T.
template <typename T, typename scalar_t>
void pack_rows(const at::Tensor& x, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t dim, int64_t ld, T* dst) {
  const scalar_t* src = row_ptr<scalar_t>(x, b, h, row0);
  const int64_t sr = x.stride(2), sd = x.stride(3);
  for (int64_t r = 0; r < rows; ++r) {
    T* out = dst + r * ld;
    const scalar_t* in = src + r * sr;
    if (sd == 1) {  // the usual layout: a unit-stride loop the compiler vectorises
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<T>(in[d]);
    } else {
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<T>(in[d * sd]);
    }
    std::fill(out + dim, out + ld, T(0));
  }
}

// rows x dim of dst at (b, h, row0) = src (rows x ld) * factor, converted to scalar_t (dst through its strides).
template <typename T, typename scalar_t>
void unpack_rows(const T* src, int64_t ld, int64_t rows, int64_t dim, T factor, at::Tensor& x, int64_t b, int64_t h,
                 int64_t row0) {
  scalar_t* dst = mutable_row_ptr<scalar_t>(x, b, h, row0);
  const int64_t sr = x.stride(2), sd = x.stride(3);
  for (int64_t r = 0; r < rows; ++r) {
    scalar_t* out = dst + r * sr;
    const T* in = src + r * ld;
    if (sd == 1) {
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<scalar_t>(in[d] * factor);
    } else {
      for (int64_t d = 0; d < dim; ++d) out[d * sd] = static_cast<scalar_t>(in[d] * factor);
    }
  }
}

// Key blocks [kb_begin, kb_end) of K or V of (sequence seq, head hkv), blocked by kBlockK keys: row-major blocks
// (kBlockK x Dp) into `rows`, and/or transposed blocks (Dp x kBlockK) into `columns` (both indexed from the sequence's
// first key); keys past the sequence's length are zero.
template <typename T, typename scalar_t>
void pack_keys(const at::Tensor& x, const Sequence& seq, int64_t hkv, const Problem& p, int64_t kb_begin,
               int64_t kb_end, T* rows, T* columns) {
  const int64_t dp = p.dim_padded;
  std::vector<T> block(kBlockK * dp);
  for (int64_t k0 = kb_begin * kBlockK; k0 < std::min(seq.k_len, kb_end * kBlockK); k0 += kBlockK) {
    const int64_t n = std::min(kBlockK, seq.k_len - k0);
    T* dst = rows != nullptr ? rows + k0 * dp : block.data();
    pack_rows<T, scalar_t>(x, seq.batch, hkv, seq.k_begin + k0, n, p.dim, dp, dst);
    std::fill(dst + n * dp, dst + kBlockK * dp, T(0));
    if (columns != nullptr) transpose(kBlockK, dp, dst, dp, columns + k0 * dp, kBlockK);
  }
}

// Runs worker(task) for every task in [0, n) on torch's intra-op threads. Each thread builds one worker (its scratch
// buffers) with make_worker() and takes the next task from a shared counter: tasks of unequal work (causal query
// blocks, sequences of different lengths) stay balanced, where a static split gave one thread the longer sequences.
// Every task writes outputs of its own, so the result does not depend on which thread ran it.
template <typename MakeWorker>
void parallel_tasks(int64_t n, const MakeWorker& make_worker) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t thread = begin; thread < end; ++thread) {
      auto worker = make_worker();
      for (int64_t task = next++; task < n; task = next++) worker(task);
    }
  });
}

// --- defined in attention.cpp, shared by the dense and varlen entry points ---

// The sizes and options every call shares; q, k (B', H, S', D) views.
Problem make_common(const at::Tensor& q, const at::Tensor& k, bool is_causal, double scale, double dropout_p,
                    const std::optional<at::Tensor>& seed);
// Adds a sequence; its keys take whole blocks in the packed K/V buffers.
void add_sequence(Problem& p, const Sequence& seq);
at::ScalarType lse_type(const at::Tensor& q);
// Checks of the tensors the backward adds: grad_out and out like q, lse (leading dims of q) in the lse dtype.
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                           const at::Tensor& lse, at::IntArrayRef lse_shape);

// --- the kernels (attention_forward.cpp, attention_decode.cpp, attention_backward.cpp): float, double, BFloat16 ---

// q, k, v, out, lse: (B', H, S', D) / (B', H, S') views (varlen: B' = 1); out and lse are written through strides.
template <typename scalar_t>
void forward_kernel(Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    at::Tensor& lse);
// The forward of few query rows (decoding), K and V read in place (attention_decode.cpp): calls whose sequences have
// at most kDecodeQueries query rows and head dim at most kDecodeMaxDim, and few rows per key/value head or few keys
// (use_decode_kernel); forward_kernel hands them over.
constexpr int64_t kDecodeQueries = 4;
constexpr int64_t kDecodeMaxDim = 256;
bool use_decode_kernel(const Problem& p);
template <typename scalar_t>
void decode_kernel(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                   at::Tensor& lse);
// grad_out, q, out, dq: (B', H, S', D); k, v, dk, dv: (B', Hkv, S', D); lse (B', H, S') (varlen: B' = 1). The
// gradients are written through their strides.
template <typename scalar_t>
void backward_kernel(Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv);

}  // namespace cpu_attention
}  // namespace kernels
