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
// several chunks a partial dQ sum of its own, added in chunk order afterwards. No two tasks write the same element and
// the result does not depend on the thread count (deterministic, no atomics on the data).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <numeric>
#include <optional>
#include <vector>

namespace kernels {
namespace {

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
constexpr int kRows = 6;          // rows of the register tile of the product kernel (12 accumulators)

// Scratch buffers aligned to 64 bytes (a cache line): the BLAS takes its fast paths on aligned tiles.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  bool operator==(const AlignedAllocator&) const { return true; }
  bool operator!=(const AlignedAllocator&) const { return false; }
};
template <typename T>
using Buffer = std::vector<T, AlignedAllocator<T>>;

// 32-byte vectors (one AVX2 register; the compiler splits them where the target is narrower).
template <typename T>
struct Vec {
  static constexpr int kWidth = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32)));
  // lane masks of comparisons (same-width integers), and one byte per lane (a bool mask's lanes)
  typedef std::conditional_t<sizeof(T) == 4, int32_t, int64_t> mask __attribute__((vector_size(32)));
  typedef uint8_t bytes __attribute__((vector_size(kWidth)));
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// Columns of the register tile (two vectors): every padded width (head dim, key block) is a multiple of it.
template <typename T>
constexpr int64_t panel() {
  return 2 * Vec<T>::kWidth;
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// C[R x 2W] (+)= A[R x K] * B[K x 2W]: all row-major; the 2R accumulators stay in registers.
template <typename T, int R>
inline void tile(int64_t k_dim, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  V acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = accumulate ? load(c + r * ldc) : V{};
    acc[r][1] = accumulate ? load(c + r * ldc + W) : V{};
  }
  for (int64_t k = 0; k < k_dim; ++k) {
    const V b0 = load(b + k * ldb), b1 = load(b + k * ldb + W);
    for (int r = 0; r < R; ++r) {
      const T x = a[r * lda + k];
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    store(c + r * ldc, acc[r][0]);
    store(c + r * ldc + W, acc[r][1]);
  }
}

// C[M x N] (+)= A[M x K] * B[K x N], row-major, N a multiple of panel<T>(). Each B panel (K x 2W) is reused by all
// row groups while it sits in L1.
template <typename T>
void gemm(int64_t m, int64_t n, int64_t k_dim, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc,
          bool accumulate) {
  for (int64_t j = 0; j < n; j += panel<T>()) {
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows) {
      tile<T, kRows>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
    switch (m - i) {
      case 5: tile<T, 5>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate); break;
      case 4: tile<T, 4>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate); break;
      case 3: tile<T, 3>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate); break;
      case 2: tile<T, 2>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate); break;
      case 1: tile<T, 1>(k_dim, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate); break;
      default: break;
    }
  }
}

// The tile products: C[M x N] (+)= A[M x K] * B[K x N], row-major. fp32 goes to torch's CPU BLAS (its batch-reduce
// GEMM entry point, MKL or oneDNN underneath; it took the (4, 8, 512, 64) fp32 forward from ~0.75x to ~1.0x of torch's
// SDPA, one thread); fp64, and torch builds without that entry point, use the register-tiled kernel above.
template <typename T>
void block_gemm(int64_t m, int64_t n, int64_t k_dim, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                int64_t ldc, bool accumulate) {
#ifdef CPUBLAS_BRGEMM_F32F32F32
  if constexpr (std::is_same_v<T, float>) {
    at::native::cpublas::brgemm(m, n, k_dim, lda, ldb, ldc, accumulate, a, b, c);
    return;
  }
#endif
  gemm<T>(m, n, k_dim, a, lda, b, ldb, c, ldc, accumulate);
}

// max of x[0 : n], n a multiple of panel<T>(), in vector lanes (a scalar loop would be latency bound).
template <typename T>
inline T row_max(const T* x, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  V a = load(x), b = load(x + W);
  for (int64_t j = 2 * W; j < n; j += 2 * W) {
    const V c = load(x + j), d = load(x + j + W);
    a = a > c ? a : c;
    b = b > d ? b : d;
  }
  a = a > b ? a : b;
  T m = a[0];
  for (int i = 1; i < W; ++i) m = std::max(m, a[i]);
  return m;
}

#if defined(__AVX__)
// dst[c][r] = src[r][c] for one 8 x 8 fp32 tile, in registers: pairs of rows interleaved, then groups of four, then
// the 128-bit halves exchanged (8 loads, 24 shuffles, 8 stores instead of 64 strided scalar stores).
inline void transpose_8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);      // a0 b0 a1 b1 | a4 b4 a5 b5
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);  // a2 b2 a3 b3 | a6 b6 a7 b7
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));          // a0 b0 c0 d0 | a4 b4 c4 d4
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));      // a1 b1 c1 d1 | a5 b5 c5 d5
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));  // a2 .. d2 | a6 .. d6
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));  // a3 .. d3 | a7 .. d7
  }
  // column c: rows 0-3 from r[c], rows 4-7 from r[c + 4]; column c + 4: their high halves
  for (int c = 0; c < 4; ++c) {
    _mm256_storeu_ps(dst + c * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x20));
    _mm256_storeu_ps(dst + (c + 4) * ldd, _mm256_permute2f128_ps(r[c], r[c + 4], 0x31));
  }
}
#endif

// sum of a[j] * b[j] over n (a multiple of panel<T>()) elements, in vector lanes.
template <typename T>
inline T dot_product(const T* a, const T* b, int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kWidth;
  V x = V{}, y = V{};
  for (int64_t j = 0; j < n; j += 2 * W) {
    x += load(a + j) * load(b + j);
    y += load(a + j + W) * load(b + j + W);
  }
  x += y;
  T sum = 0;
  for (int i = 0; i < W; ++i) sum += x[i];
  return sum;
}

// dst[c][r] = src[r][c] for an (rows x cols) block, in 8 x 8 tiles (cache friendly; whole fp32 tiles in registers).
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
    for (int64_t c0 = 0; c0 < cols; c0 += kTile) {
#if defined(__AVX__)
      if constexpr (std::is_same_v<T, float>) {
        if (r0 + kTile <= rows && c0 + kTile <= cols) {
          transpose_8x8(src + r0 * lds + c0, lds, dst + c0 * ldd + r0, ldd);
          continue;
        }
      }
#endif
      const int64_t r1 = std::min(rows, r0 + kTile), c1 = std::min(cols, c0 + kTile);
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = c0; c < c1; ++c) dst[c * ldd + r] = src[r * lds + c];
      }
    }
  }
}

// x[j] = 2^(x[j] * scale - shift) over n (a multiple of panel<T>()) elements, returning their sum. The exponents are
// in base-2 units (the scale includes log2 e) and shift is the row maximum or the row's log-sum-exp, so
// x[j] * scale - shift <= 0 (up to rounding): only underflow needs care. fp32: 2^t = 2^r * 2^f with r = round(t) in
// [-127, 0], |f| <= 1/2; 2^f by a degree-6 polynomial (least squares in relative error on [-1/2, 1/2]: 1e-7 in fp32,
// under one ulp). t is clamped to -127 (so -inf gives -127): r = -127 builds the exponent field 0, i.e. the factor
// +0.0, so masked scores and results below 2^-126 become exactly 0. r is read from the mantissa of t + 1.5 * 2^23
// (its low bits hold round(t)).
inline float exp2_scaled(float* x, int64_t n, float scale, float shift) {
  using V = Vec<float>::type;
  typedef int32_t I __attribute__((vector_size(32)));
  constexpr int W = Vec<float>::kWidth;
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  constexpr float kC[7] = {1.0f, 0.6931471824645996f, 0.24022646248340607f, 0.05550329014658928f,
                           0.009618519805371761f, 0.0013399859890341759f, 0.00015337577497120947f};
  V sum = V{};
  for (int64_t j = 0; j < n; j += W) {
    V t = load(x + j) * scale - shift;
    t = t > -127.f ? t : V{} - 127.f;
    const V magic = t + kMagic;
    const V f = t - (magic - kMagic);
    V p = V{} + kC[6];
    for (int c = 5; c >= 0; --c) p = p * f + kC[c];
    I bits;
    std::memcpy(&bits, &magic, sizeof(bits));
    bits = (bits << 23) + (127 << 23);  // the low 9 bits of magic's pattern are r mod 512: exponent field r + 127
    V factor;
    std::memcpy(&factor, &bits, sizeof(factor));
    const V r = p * factor;
    store(x + j, r);
    sum += r;
  }
  float total = 0.f;
  for (int i = 0; i < W; ++i) total += sum[i];
  return total;
}

inline double exp2_scaled(double* x, int64_t n, double scale, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += x[j] = std::exp2(x[j] * scale - shift);
  return total;
}

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

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
// scaled by scale2 = scale * log2 e, plus `key_bias` when given (0, or -inf for a padding key), then causality, the
// keys past `keys` (the sequence's length) and the mask (additive values also times log2 e); hidden keys are -inf.
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
      if (key_bias != nullptr) x += load(key_bias + j);
      x = apply(x, j);
      store(s + j, x);
      top = top > x ? top : x;
    }
    T row_top = top[0];
    for (int l = 1; l < W; ++l) row_top = std::max(row_top, top[l]);
    for (int64_t j = full; j < valid; ++j) {
      T x = s[j] * scale2 + (key_bias != nullptr ? key_bias[j] : T(0));
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
    const T* m = reinterpret_cast<const T*>(mask_row_start);  // additive, in natural-log units
    return pass([&](V x, int64_t j) { return x + load(m + j) * log2e; },
                [&](T x, int64_t j) { return x + m[j] * log2e; });
  }
  pass([](V x, int64_t) { return x; }, [](T x, int64_t) { return x; });
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, masks.mask_type, "attention_mask", [&] {
    const scalar_t* m = reinterpret_cast<const scalar_t*>(mask_row_start);
    const int64_t st = masks.stride_k;
    for (int64_t j = 0; j < valid; ++j) {
      if constexpr (std::is_same_v<scalar_t, bool>) {
        s[j] = m[j * st] ? s[j] : kNegInf;  // a select: a random mask would mispredict a branch per hidden key
      } else {
        s[j] += static_cast<T>(m[j * st]) * log2e;
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
  std::vector<Sequence> seqs;
  std::vector<int64_t> key_base;  // seqs + 1 offsets of each sequence's keys padded to whole blocks
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

// q, k, v, out, lse: (B', H, S', D) / (B', H, S') views (varlen: B' = 1); out and lse are written through strides.
template <typename scalar_t>
void forward_kernel(Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    at::Tensor& lse) {
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
              if (block_max == kNegInf) {  // nothing visible in this block: p = 0
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
          // Normalise and write; rows with no visible key give zeros and lse = +inf (natural log units).
          T* lse_row = lse.mutable_data_ptr<T>() + seq.batch * lse.stride(0) + h * lse.stride(1) +
                       (seq.q_begin + q0) * lse.stride(2);
          for (int64_t r = 0; r < rows; ++r) {
            const T inv = l[r] > T(0) ? keep_scale / l[r] : T(0);
            for (int64_t d = 0; d < dp; ++d) o[r * dp + d] *= inv;
            lse_row[r * lse.stride(2)] =
                l[r] > T(0) ? (m[r] + std::log2(l[r])) * static_cast<T>(kLn2) : std::numeric_limits<T>::infinity();
          }
          unpack_rows<T, scalar_t>(o.data(), dp, rows, p.dim, T(1), out, seq.batch, h, seq.q_begin + q0);
        }
      }
    };
  });
}
// grad_out, q, out, dq: (B', H, S', D); k, v, dk, dv: (B', Hkv, S', D); lse (B', H, S') (varlen: B' = 1). The
// gradients are written through their strides.
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
          pack_rows<T, scalar_t>(out, seq.batch, h, row0, rows, p.dim, dp, ob.data());
          const T* lse_row = lse.const_data_ptr<T>() + seq.batch * lse.stride(0) + h * lse.stride(1) +
                             row0 * lse.stride(2);
          const int64_t lse_stride = lse.stride(2);
          for (int64_t r = 0; r < rows; ++r) delta[r] = dot_product(dot.data() + r * dp, ob.data() + r * dp, dp);
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
              exp2_scaled(pr, width, plain ? scale2 : T(1), lse_row[r * lse_stride] * static_cast<T>(kLog2e));
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
                for (int64_t j = 0; j < width; ++j) dr[j] = pr[j] * (dr[j] - delta[r]);  // dS
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

// The sizes and options every call shares; q, k (B', H, S', D) views.
Problem make_common(const at::Tensor& q, const at::Tensor& k, bool is_causal, double scale, double dropout_p,
                    const std::optional<at::Tensor>& seed) {
  Problem p;
  p.heads = q.size(1);
  p.sq_total = q.size(2);
  p.dim = q.size(3);
  p.kv_heads = k.size(1);
  p.sk_total = k.size(2);
  TORCH_CHECK_VALUE(k.size(3) == p.dim, "argument `k` has head dim ", k.size(3), "; expected ", p.dim,
                    " (the head dim of `q`)");
  TORCH_CHECK_VALUE(p.kv_heads > 0 ? p.heads % p.kv_heads == 0 : p.heads == 0, "argument `k` has ", p.kv_heads,
                    " heads, which does not divide the ", p.heads, " heads of `q`");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
  p.dim_padded = round_up(p.dim, q.scalar_type() == at::kDouble ? panel<double>() : panel<float>());
  p.scale = scale;
  p.dropout_p = dropout_p;
  check_dropout_seed(seed, dropout_p, q, "q");
  p.seed = dropout_p > 0.0 ? static_cast<uint64_t>(seed->item<int64_t>()) : 0;
  p.causal = is_causal;
  return p;
}

// Adds a sequence; its keys take whole blocks in the packed K/V buffers.
void add_sequence(Problem& p, const Sequence& seq) {
  p.seqs.push_back(seq);
  p.key_base.push_back(p.key_base.back() + round_up(seq.k_len, kBlockK));
  p.max_q = std::max(p.max_q, seq.q_len);
}

// A dense call: checks every argument (messages name it); one sequence per batch entry.
Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
                     bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  check_attention_qkv(q, k, v, 4, {at::kFloat, at::kDouble, at::kBFloat16});
  const int64_t batch = q.size(0), sq = q.size(2), sk = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == batch, "argument `k` has batch ", k.size(0), "; expected ", batch,
                    " (the batch of `q`)");
  Problem p = make_common(q, k, is_causal, scale, dropout_p, seed);
  if (mask.has_value()) {
    check_dim(*mask, "mask", 4);
    check_same_device(*mask, "mask", q, "q");
    check_dtype(*mask, "mask", {at::kBool, at::kFloat, at::kDouble, at::kBFloat16, at::kHalf});
    const std::vector<int64_t> expected{batch, p.heads, sq, sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
  }
  if (key_padding_mask.has_value()) {
    check_dim(*key_padding_mask, "key_padding_mask", 2);
    check_same_device(*key_padding_mask, "key_padding_mask", q, "q");
    check_dtype(*key_padding_mask, "key_padding_mask", {at::kBool});
    const std::vector<int64_t> expected{batch, sk};
    TORCH_CHECK_VALUE(key_padding_mask->sizes() == at::IntArrayRef(expected), "argument `key_padding_mask` has shape ",
                      key_padding_mask->sizes(), "; expected ", at::IntArrayRef(expected));
  }
  p.mask = mask;
  p.padding = key_padding_mask;
  p.key_base.push_back(0);
  for (int64_t b = 0; b < batch; ++b) add_sequence(p, Sequence{b, 0, sq, 0, sk});
  return p;
}

at::ScalarType lse_type(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const std::optional<at::Tensor>& mask,
                                                         const std::optional<at::Tensor>& key_padding_mask,
                                                         bool is_causal, double scale, double dropout_p,
                                                         const std::optional<at::Tensor>& seed) {
  Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  at::Tensor out = empty_output({q.size(0), p.heads, p.sq_total, p.dim}, q.options());
  at::Tensor lse = empty_output({q.size(0), p.heads, p.sq_total}, q.options().dtype(lse_type(q)));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_forward_cpu",
                                 [&] { forward_kernel<scalar_t>(p, q, k, v, out, lse); });
  return {out, lse};
}

// Checks of the tensors the backward adds: grad_out and out like q, lse (leading dims of q) in the lse dtype.
void check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& out,
                           const at::Tensor& lse, at::IntArrayRef lse_shape) {
  check_like_q(grad_out, "grad_out", q);
  check_like_q(out, "out", q);
  TORCH_CHECK_VALUE(lse.scalar_type() == lse_type(q) && lse.sizes() == lse_shape, "argument `lse` has dtype ",
                    lse.scalar_type(), " and shape ", lse.sizes(), "; expected ", lse_type(q), " and ", lse_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  check_backward_inputs(grad_out, q, out, lse, q.sizes().slice(0, 3));
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), q.options());
  at::Tensor dv = empty_output(k.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_backward_cpu",
                                 [&] { backward_kernel<scalar_t>(p, grad_out, q, k, v, out, lse, dq, dk, dv); });
  return {dq, dk, dv};
}

// --- varlen: packed sequences ----------------------------------------------------------------------------------------

// (T, H, D) -> the (1, H, T, D) view the kernels index.
at::Tensor heads_first(const at::Tensor& x) { return x.transpose(0, 1).unsqueeze(0); }

// A varlen call: checks every argument; one sequence per pair of offsets (int32 (N + 1,), non-decreasing, within the
// packed tensors, lengths within max_seqlen).
Problem make_varlen_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_q,
                            const at::Tensor& cu_k, int64_t max_q, int64_t max_k, bool is_causal, double scale,
                            double dropout_p, const std::optional<at::Tensor>& seed) {
  check_attention_qkv(q, k, v, 3, {at::kFloat, at::kDouble, at::kBFloat16});
  for (const auto& [cu, name] : {std::pair{cu_q, "cu_seqlens_q"}, std::pair{cu_k, "cu_seqlens_k"}}) {
    check_dtype(cu, name, {at::kInt});
    check_dim(cu, name, 1);
    check_same_device(cu, name, q, "q");
    TORCH_CHECK_VALUE(cu.numel() >= 1, "argument `", name, "` is empty; expected (N + 1,) offsets");
  }
  TORCH_CHECK_VALUE(cu_k.numel() == cu_q.numel(), "argument `cu_seqlens_k` has ", cu_k.numel(), " entries; expected ",
                    cu_q.numel(), " like `cu_seqlens_q`");
  Problem p = make_common(heads_first(q), heads_first(k), is_causal, scale, dropout_p, seed);
  const at::Tensor oq = cu_q.contiguous(), ok = cu_k.contiguous();
  const int32_t* offq = oq.const_data_ptr<int32_t>();
  const int32_t* offk = ok.const_data_ptr<int32_t>();
  p.key_base.push_back(0);
  for (int64_t i = 0; i + 1 < cu_q.numel(); ++i) {
    const int64_t lq = offq[i + 1] - offq[i], lk = offk[i + 1] - offk[i];
    TORCH_CHECK_VALUE(offq[i] >= 0 && lq >= 0 && offq[i + 1] <= p.sq_total, "argument `cu_seqlens_q` has offsets ",
                      offq[i], ", ", offq[i + 1], " at ", i, "; expected non-decreasing offsets within the ",
                      p.sq_total, " rows of `q`");
    TORCH_CHECK_VALUE(offk[i] >= 0 && lk >= 0 && offk[i + 1] <= p.sk_total, "argument `cu_seqlens_k` has offsets ",
                      offk[i], ", ", offk[i + 1], " at ", i, "; expected non-decreasing offsets within the ",
                      p.sk_total, " rows of `k`");
    TORCH_CHECK_VALUE(lq <= max_q && lk <= max_k, "sequence ", i, " has lengths ", lq, " (q) and ", lk,
                      " (k); arguments `max_seqlen_q` = ", max_q, " and `max_seqlen_k` = ", max_k,
                      " must bound them");
    add_sequence(p, Sequence{0, offq[i], lq, offk[i], lk});
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                                                const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                                                                const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                                int64_t max_seqlen_k, bool is_causal, double scale,
                                                                double dropout_p,
                                                                const std::optional<at::Tensor>& seed) {
  Problem p = make_varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                  dropout_p, seed);
  at::Tensor out = empty_output(q.sizes(), q.options());                                 // (Tq, H, D)
  at::Tensor lse = empty_output({p.heads, p.sq_total}, q.options().dtype(lse_type(q)));  // (H, Tq)
  at::Tensor out_view = heads_first(out), lse_view = lse.unsqueeze(0);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "varlen_attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(p, heads_first(q), heads_first(k), heads_first(v), out_view, lse_view);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, bool is_causal, double scale, double dropout_p, const std::optional<at::Tensor>& seed) {
  Problem p = make_varlen_problem(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal, scale,
                                  dropout_p, seed);
  const std::vector<int64_t> lse_shape{p.heads, p.sq_total};
  check_backward_inputs(grad_out, q, out, lse, lse_shape);
  at::Tensor dq = empty_output(q.sizes(), q.options());
  at::Tensor dk = empty_output(k.sizes(), q.options());
  at::Tensor dv = empty_output(k.sizes(), q.options());
  at::Tensor dq_view = heads_first(dq), dk_view = heads_first(dk), dv_view = heads_first(dv);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "varlen_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(p, heads_first(grad_out), heads_first(q), heads_first(k), heads_first(v),
                              heads_first(out), lse.unsqueeze(0), dq_view, dk_view, dv_view);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
  m.impl("varlen_attention_forward", &varlen_attention_forward_cpu);
  m.impl("varlen_attention_backward", &varlen_attention_backward_cpu);
}

}  // namespace kernels
