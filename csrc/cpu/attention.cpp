// Fused masked attention on the CPU, flash style: scores are computed one (query block x key block) tile at a time
// with an online softmax, so no (Sq, Sk) matrix is ever stored.
//
// Layouts: q (B, H, Sq, D), k and v (B, Hkv, Sk, D) read through their strides (any layout, no copy); out
// (B, H, Sq, D) contiguous in q's dtype; lse (B, H, Sq) = log-sum-exp of the scaled, masked scores per query row, in
// fp32 (fp64 for fp64 inputs), +inf for a row with no visible key (its output is zero and its gradients are zero).
// Masks, combined by the kernels and never expanded: `mask` is None or a bool (True = take part) or floating (added
// to the scaled scores) tensor viewed as (B, H, Sq, Sk) with stride-0 broadcast dimensions; `is_causal` hides key
// j > query i (top-left aligned); `key_padding_mask` is None or bool (B, Sk), True = padding (hidden).
// Dropout: keep element (b, h, i, j) when Philox(seed, ((b*H + h)*Sq + i)*Sk + j) >= p (kernels/philox.h, the same
// numbers as Triton's tl.rand), kept probabilities scaled by 1 / (1 - p).
//
// Numerics: inputs are converted to T = fp32 (fp64 for fp64) once, into blocked, zero-padded tiles; every product and
// the softmax run in T. The tile products use a small register-blocked kernel on GCC/Clang vector types (AVX2: 8
// floats), the exponentials a vectorised polynomial (fp32) or std::exp (fp64).
//
// Parallelism: the forward runs at::parallel_for over B x H x query blocks. The backward runs over B x Hkv: one task
// owns the dK/dV of its key/value head (and the dQ of the heads that share it, GQA), so no two tasks write the same
// element and the result does not depend on the thread count (deterministic, no atomics).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/outputs.h>
#include <kernels/philox.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

namespace kernels {
namespace {

constexpr int64_t kBlockQ = 64;   // query rows per tile
constexpr int64_t kBlockK = 128;  // keys per tile
constexpr int kRows = 6;          // rows of the register tile of the product kernel (12 accumulators)

// 32-byte vectors (one AVX2 register; the compiler splits them where the target is narrower).
template <typename T>
struct Vec {
  static constexpr int kWidth = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32)));
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

// dst[c][r] = src[r][c] for an (rows x cols) block.
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
}

// x[j] = exp(x[j] - shift) over n (a multiple of panel<T>()) elements, returning their sum; -inf gives exactly 0.
// fp32: exp(x) = 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f by its degree-7 Taylor polynomial (relative
// error < 1e-8, below fp32 rounding); results below 2^-126 flush to 0.
inline float exp_shifted(float* x, int64_t n, float shift) {
  using V = Vec<float>::type;
  typedef int32_t I __attribute__((vector_size(32)));
  constexpr int W = Vec<float>::kWidth;
  constexpr float kLog2e = 1.44269504088896341f, kLn2 = 0.693147180559945309f;
  constexpr float kC[8] = {1.f, kLn2, kLn2 * kLn2 / 2, kLn2 * kLn2 * kLn2 / 6, 0.00961812910762847716f,
                           0.00133335581464284434f, 0.000154035303933816099f, 1.52527338040598403e-05f};
  V sum = V{};
  for (int64_t j = 0; j < n; j += W) {
    V t = (load(x + j) - shift) * kLog2e;
    const I tiny = t < -126.f;  // also -inf and NaN-free: masked scores are -inf
    t = t < -126.f ? V{} - 126.f : t;
    t = t > 127.f ? V{} + 127.f : t;
    const V rounded = (t + 12582912.f) - 12582912.f;  // round to nearest (1.5 * 2^23 trick)
    const V f = t - rounded;
    V p = V{} + kC[7];
    for (int c = 6; c >= 0; --c) p = p * f + kC[c];
    const I e = (__builtin_convertvector(rounded, I) + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof(scale));
    V r = p * scale;
    I bits;
    std::memcpy(&bits, &r, sizeof(bits));
    bits &= ~tiny;
    std::memcpy(&r, &bits, sizeof(r));
    store(x + j, r);
    sum += r;
  }
  float total = 0.f;
  for (int i = 0; i < W; ++i) total += sum[i];
  return total;
}

inline double exp_shifted(double* x, int64_t n, double shift) {
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) total += x[j] = std::exp(x[j] - shift);
  return total;
}

// The masks of one (b, h) pair, read through strides.
struct Masks {
  const void* mask = nullptr;  // at (b, h): element (i, j) at mask + i * stride_q + j * stride_k
  at::ScalarType mask_type = at::kBool;
  int64_t stride_q = 0, stride_k = 0;
  const bool* padding = nullptr;  // at b: key j is padding when padding[j * padding_stride]
  int64_t padding_stride = 0;
  bool causal = false;
  int64_t keys = 0;  // Sk
};

// s[0 : width] = scores of query row i against keys k0 + [0, width): scaled, plus `key_bias` (0, or -inf for a
// padding key or a key past Sk), then causality and the mask; hidden keys are -inf. Returns the row's maximum.
template <typename T>
T mask_row(T* s, int64_t width, int64_t i, int64_t k0, T scale, const T* key_bias, const Masks& masks) {
  using V = typename Vec<T>::type;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  constexpr int W = Vec<T>::kWidth;
  V top = V{} + kNegInf;  // scale, bias and max in one pass
  for (int64_t j = 0; j < width; j += W) {
    const V x = load(s + j) * scale + load(key_bias + j);
    store(s + j, x);
    top = top > x ? top : x;
  }
  T row_top = top[0];
  for (int l = 1; l < W; ++l) row_top = std::max(row_top, top[l]);
  int64_t valid = width;
  if (masks.causal && i + 1 - k0 < width) {
    valid = std::max<int64_t>(i + 1 - k0, 0);
    std::fill(s + valid, s + width, kNegInf);
    if (masks.mask == nullptr) return row_max(s, width);
  }
  if (masks.mask == nullptr) return row_top;
  const int64_t base = i * masks.stride_q + k0 * masks.stride_k, st = masks.stride_k;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, masks.mask_type, "attention_mask", [&] {
    const scalar_t* m = static_cast<const scalar_t*>(masks.mask) + base;
    const int64_t n = std::min(valid, masks.keys - k0);
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (std::is_same_v<scalar_t, bool>) {
        if (!m[j * st]) s[j] = kNegInf;
      } else {
        s[j] += static_cast<T>(m[j * st]);
      }
    }
  });
  return row_max(s, width);
}

// Everything the kernels need about one call.
struct Problem {
  int64_t batch, heads, kv_heads, sq, sk, dim, dim_padded;
  double scale, dropout_p;
  uint64_t seed;
  bool causal;
  std::optional<at::Tensor> mask, padding;

  int64_t group() const { return kv_heads > 0 ? heads / kv_heads : 1; }  // query heads per key/value head (GQA)

  Masks masks(int64_t b, int64_t h) const {
    Masks m;
    m.causal = causal;
    m.keys = sk;
    if (mask.has_value()) {
      const at::Tensor& t = *mask;
      m.mask = static_cast<const char*>(t.const_data_ptr()) +
               (b * t.stride(0) + h * t.stride(1)) * static_cast<int64_t>(t.element_size());
      m.mask_type = t.scalar_type();
      m.stride_q = t.stride(2);
      m.stride_k = t.stride(3);
    }
    if (padding.has_value()) {
      m.padding = padding->const_data_ptr<bool>() + b * padding->stride(0);
      m.padding_stride = padding->stride(1);
    }
    return m;
  }

  // A key block can be skipped when causality hides it from every row of the query block, or every key is padding.
  bool skip(int64_t q0, int64_t q_rows, int64_t k0, const std::vector<char>& block_has_keys, int64_t b) const {
    if (causal && k0 > q0 + q_rows - 1) return true;
    return !block_has_keys[b * round_up(sk, kBlockK) / kBlockK + k0 / kBlockK];
  }

  // Per batch, keys padded to whole blocks: 0 for a key that takes part, -inf for padding and for keys past Sk.
  template <typename T>
  std::vector<T> key_bias() const {
    const int64_t width = round_up(sk, kBlockK);
    std::vector<T> bias(batch * width, -std::numeric_limits<T>::infinity());
    for (int64_t b = 0; b < batch; ++b) {
      const Masks m = masks(b, 0);
      for (int64_t j = 0; j < sk; ++j) {
        bias[b * width + j] = m.padding != nullptr && m.padding[j * m.padding_stride] ? bias[b * width + j] : T(0);
      }
    }
    return bias;
  }

  // For each (b, key block): whether any of its keys takes part.
  template <typename T>
  static std::vector<char> blocks_with_keys(const std::vector<T>& bias) {
    std::vector<char> has(bias.size() / kBlockK);
    for (size_t blk = 0; blk < has.size(); ++blk) {
      has[blk] = std::any_of(bias.begin() + blk * kBlockK, bias.begin() + (blk + 1) * kBlockK,
                             [](T x) { return x == T(0); });
    }
    return has;
  }

  uint64_t dropout_offset(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return static_cast<uint64_t>(((b * heads + h) * sq + i) * sk + j);
  }
};

// rows x dim of a (B, H, S, D) tensor at (b, h, row0) -> dst (rows x dim_padded, zero padding), converted to T.
template <typename T, typename scalar_t>
void pack_rows(const at::Tensor& x, int64_t b, int64_t h, int64_t row0, int64_t rows, int64_t dim, int64_t ld, T* dst) {
  const scalar_t* src = x.const_data_ptr<scalar_t>() + b * x.stride(0) + h * x.stride(1) + row0 * x.stride(2);
  const int64_t sr = x.stride(2), sd = x.stride(3);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t d = 0; d < dim; ++d) dst[r * ld + d] = static_cast<T>(src[r * sr + d * sd]);
    std::fill(dst + r * ld + dim, dst + (r + 1) * ld, T(0));
  }
}

// K or V of head (b, hkv), blocked by kBlockK keys: row-major blocks (kBlockK x Dp) into `rows`, and/or transposed
// blocks (Dp x kBlockK) into `columns`; keys past Sk are zero.
template <typename T, typename scalar_t>
void pack_keys(const at::Tensor& x, int64_t b, int64_t hkv, const Problem& p, T* rows, T* columns) {
  const int64_t dp = p.dim_padded, blocks = round_up(p.sk, kBlockK) / kBlockK;
  std::vector<T> block(kBlockK * dp);
  for (int64_t kb = 0; kb < blocks; ++kb) {
    const int64_t k0 = kb * kBlockK, n = std::min(kBlockK, p.sk - k0);
    T* dst = rows != nullptr ? rows + kb * kBlockK * dp : block.data();
    pack_rows<T, scalar_t>(x, b, hkv, k0, n, p.dim, dp, dst);
    std::fill(dst + n * dp, dst + kBlockK * dp, T(0));
    if (columns != nullptr) transpose(kBlockK, dp, dst, dp, columns + kb * kBlockK * dp, kBlockK);
  }
}

template <typename scalar_t>
void forward_kernel(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                    at::Tensor& lse) {
  using T = at::opmath_type<scalar_t>;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t dp = p.dim_padded, key_blocks = round_up(p.sk, kBlockK) / kBlockK;
  const int64_t query_blocks = round_up(p.sq, kBlockQ) / kBlockQ, group = p.group();
  const int64_t per_head = key_blocks * kBlockK * dp;

  // K transposed (Dp x kBlockK per block) and V (kBlockK x Dp per block), per (b, hkv), in T.
  std::vector<T> kt(p.batch * p.kv_heads * per_head), vb(p.batch * p.kv_heads * per_head);
  at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      pack_keys<T, scalar_t>(k, t / p.kv_heads, t % p.kv_heads, p, nullptr, kt.data() + t * per_head);
      pack_keys<T, scalar_t>(v, t / p.kv_heads, t % p.kv_heads, p, vb.data() + t * per_head, nullptr);
    }
  });
  const std::vector<T> key_bias = p.key_bias<T>();
  const std::vector<char> has_keys = Problem::blocks_with_keys(key_bias);
  const T scale = static_cast<T>(p.scale);
  const float drop = static_cast<float>(p.dropout_p);

  at::parallel_for(0, p.batch * p.heads * query_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qt(kBlockQ * dp), s(kBlockQ * kBlockK), o(kBlockQ * dp), m(kBlockQ), l(kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t qb = task % query_blocks, bh = task / query_blocks, b = bh / p.heads, h = bh % p.heads;
      const int64_t q0 = qb * kBlockQ, rows = std::min(kBlockQ, p.sq - q0), kv = b * p.kv_heads + h / group;
      const Masks masks = p.masks(b, h);
      pack_rows<T, scalar_t>(q, b, h, q0, rows, p.dim, dp, qt.data());
      std::fill(o.begin(), o.end(), T(0));
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), T(0));
      for (int64_t kb = 0; kb < key_blocks; ++kb) {
        const int64_t k0 = kb * kBlockK;
        if (p.skip(q0, rows, k0, has_keys, b)) continue;
        // s = q k^T (rows x kBlockK), then scale and mask.
        gemm<T>(rows, kBlockK, dp, qt.data(), dp, kt.data() + kv * per_head + kb * kBlockK * dp, kBlockK, s.data(),
                kBlockK, false);
        for (int64_t r = 0; r < rows; ++r) {
          T* row = s.data() + r * kBlockK;
          const T block_max =
              mask_row<T>(row, kBlockK, q0 + r, k0, scale, key_bias.data() + b * key_blocks * kBlockK + k0, masks);
          if (block_max == kNegInf) {  // nothing visible in this block: p = 0
            std::fill(row, row + kBlockK, T(0));
            continue;
          }
          // Online softmax: rescale the running sum and output to the new maximum.
          const T m_new = std::max(m[r], block_max);
          const T alpha = std::exp(m[r] - m_new);  // 0 when m[r] = -inf
          l[r] = l[r] * alpha + exp_shifted(row, kBlockK, m_new);
          m[r] = m_new;
          if (alpha != T(1)) {
            for (int64_t d = 0; d < dp; ++d) o[r * dp + d] *= alpha;
          }
          if (drop > 0.f) {  // the sum above is of the undropped probabilities
            const int64_t n = std::min(kBlockK, p.sk - k0);
            for (int64_t j = 0; j < n; ++j) {
              if (!dropout_keep(p.seed, p.dropout_offset(b, h, q0 + r, k0 + j), drop)) row[j] = T(0);
            }
          }
        }
        // o += p v (rows x Dp)
        gemm<T>(rows, dp, kBlockK, s.data(), kBlockK, vb.data() + kv * per_head + kb * kBlockK * dp, dp, o.data(), dp,
                true);
      }
      // Normalise and write; rows with no visible key give zeros and lse = +inf.
      const T keep_scale = static_cast<T>(1.0 / (1.0 - p.dropout_p));
      scalar_t* dst = out.mutable_data_ptr<scalar_t>() + ((b * p.heads + h) * p.sq + q0) * p.dim;
      auto* lse_dst = lse.mutable_data_ptr<T>() + (b * p.heads + h) * p.sq + q0;
      for (int64_t r = 0; r < rows; ++r) {
        const T inv = l[r] > T(0) ? keep_scale / l[r] : T(0);
        for (int64_t d = 0; d < p.dim; ++d) dst[r * p.dim + d] = static_cast<scalar_t>(o[r * dp + d] * inv);
        lse_dst[r] = l[r] > T(0) ? m[r] + std::log(l[r]) : std::numeric_limits<T>::infinity();
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                     const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv) {
  using T = at::opmath_type<scalar_t>;
  const int64_t dp = p.dim_padded, key_blocks = round_up(p.sk, kBlockK) / kBlockK;
  const int64_t query_blocks = round_up(p.sq, kBlockQ) / kBlockQ, group = p.group();
  const int64_t keys_padded = key_blocks * kBlockK;
  const std::vector<T> key_bias = p.key_bias<T>();
  const std::vector<char> has_keys = Problem::blocks_with_keys(key_bias);
  const T scale = static_cast<T>(p.scale);
  const float drop = static_cast<float>(p.dropout_p);
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p.dropout_p));

  at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
    const int64_t kd = keys_padded * dp;
    std::vector<T> kr(kd), kt(kd), vt(kd), dkb(kd), dvb(kd);
    std::vector<T> qt(kBlockQ * dp), dot(kBlockQ * dp), dqb(kBlockQ * dp), delta(kBlockQ);
    std::vector<T> s(kBlockQ * kBlockK), dpm(kBlockQ * kBlockK), st(kBlockK * kBlockQ);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / p.kv_heads, hkv = task % p.kv_heads;
      pack_keys<T, scalar_t>(k, b, hkv, p, kr.data(), kt.data());
      pack_keys<T, scalar_t>(v, b, hkv, p, nullptr, vt.data());
      std::fill(dkb.begin(), dkb.end(), T(0));
      std::fill(dvb.begin(), dvb.end(), T(0));
      for (int64_t h = hkv * group; h < (hkv + 1) * group; ++h) {
        const Masks masks = p.masks(b, h);
        for (int64_t qb = 0; qb < query_blocks; ++qb) {
          const int64_t q0 = qb * kBlockQ, rows = std::min(kBlockQ, p.sq - q0);
          pack_rows<T, scalar_t>(q, b, h, q0, rows, p.dim, dp, qt.data());
          pack_rows<T, scalar_t>(grad_out, b, h, q0, rows, p.dim, dp, dot.data());
          const T* lse_row = lse.const_data_ptr<T>() + (b * p.heads + h) * p.sq + q0;
          const scalar_t* o = out.const_data_ptr<scalar_t>() + ((b * p.heads + h) * p.sq + q0) * p.dim;
          for (int64_t r = 0; r < rows; ++r) {  // delta = rowsum(dO * O)
            T sum = 0;
            for (int64_t d = 0; d < p.dim; ++d) sum += dot[r * dp + d] * static_cast<T>(o[r * p.dim + d]);
            delta[r] = sum;
          }
          std::fill(dqb.begin(), dqb.end(), T(0));
          for (int64_t kb = 0; kb < key_blocks; ++kb) {
            const int64_t k0 = kb * kBlockK, n = std::min(kBlockK, p.sk - k0);
            if (p.skip(q0, rows, k0, has_keys, b)) continue;
            const int64_t off = kb * kBlockK * dp;
            // P = exp(scale * q k^T + mask - lse): the forward's probabilities, recomputed.
            gemm<T>(rows, kBlockK, dp, qt.data(), dp, kt.data() + off, kBlockK, s.data(), kBlockK, false);
            // dP_dropped = dO v^T
            gemm<T>(rows, kBlockK, dp, dot.data(), dp, vt.data() + off, kBlockK, dpm.data(), kBlockK, false);
            for (int64_t r = 0; r < rows; ++r) {
              T* pr = s.data() + r * kBlockK;
              T* dr = dpm.data() + r * kBlockK;
              mask_row<T>(pr, kBlockK, q0 + r, k0, scale, key_bias.data() + b * keys_padded + k0, masks);
              exp_shifted(pr, kBlockK, lse_row[r]);  // lse = +inf (no visible key) gives 0
              if (drop > 0.f) {
                // s row becomes the dropped probabilities (for dV), dP is taken back through the dropout.
                for (int64_t j = 0; j < n; ++j) {
                  const bool keep = dropout_keep(p.seed, p.dropout_offset(b, h, q0 + r, k0 + j), drop);
                  const T pj = pr[j];
                  pr[j] = keep ? pj * keep_scale : T(0);
                  dr[j] = keep ? pj * (dr[j] * keep_scale - delta[r]) : pj * -delta[r];
                }
                for (int64_t j = n; j < kBlockK; ++j) dr[j] = T(0);
              } else {
                for (int64_t j = 0; j < kBlockK; ++j) dr[j] = pr[j] * (dr[j] - delta[r]);  // dS
              }
            }
            // dV += P_dropped^T dO
            transpose(rows, kBlockK, s.data(), kBlockK, st.data(), kBlockQ);
            gemm<T>(kBlockK, dp, rows, st.data(), kBlockQ, dot.data(), dp, dvb.data() + off, dp, true);
            // dQ += dS k ; dK += dS^T q (the softmax scale is applied once at the end)
            gemm<T>(rows, dp, kBlockK, dpm.data(), kBlockK, kr.data() + off, dp, dqb.data(), dp, true);
            transpose(rows, kBlockK, dpm.data(), kBlockK, st.data(), kBlockQ);
            gemm<T>(kBlockK, dp, rows, st.data(), kBlockQ, qt.data(), dp, dkb.data() + off, dp, true);
          }
          scalar_t* dst = dq.mutable_data_ptr<scalar_t>() + ((b * p.heads + h) * p.sq + q0) * p.dim;
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t d = 0; d < p.dim; ++d) dst[r * p.dim + d] = static_cast<scalar_t>(dqb[r * dp + d] * scale);
          }
        }
      }
      scalar_t* dk_dst = dk.mutable_data_ptr<scalar_t>() + (b * p.kv_heads + hkv) * p.sk * p.dim;
      scalar_t* dv_dst = dv.mutable_data_ptr<scalar_t>() + (b * p.kv_heads + hkv) * p.sk * p.dim;
      for (int64_t j = 0; j < p.sk; ++j) {
        for (int64_t d = 0; d < p.dim; ++d) {
          dk_dst[j * p.dim + d] = static_cast<scalar_t>(dkb[j * dp + d] * scale);
          dv_dst[j * p.dim + d] = static_cast<scalar_t>(dvb[j * dp + d]);
        }
      }
    }
  });
}

// Checks every argument (messages name it) and gathers the sizes.
Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
                     bool is_causal, double scale, double dropout_p, int64_t seed) {
  check_dtype(q, "q", {at::kFloat, at::kDouble, at::kBFloat16});
  check_dim(q, "q", 4);
  check_dim(k, "k", 4);
  check_dim(v, "v", 4);
  check_same_dtype(k, "k", q, "q");
  check_same_dtype(v, "v", q, "q");
  check_same_device(k, "k", q, "q");
  check_same_device(v, "v", q, "q");
  check_same_shape(v, "v", k, "k");
  Problem p;
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.sq = q.size(2);
  p.dim = q.size(3);
  p.kv_heads = k.size(1);
  p.sk = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == p.batch, "argument `k` has batch ", k.size(0), "; expected ", p.batch,
                    " (the batch of `q`)");
  TORCH_CHECK_VALUE(k.size(3) == p.dim, "argument `k` has head dim ", k.size(3), "; expected ", p.dim,
                    " (the head dim of `q`)");
  TORCH_CHECK_VALUE(p.kv_heads > 0 ? p.heads % p.kv_heads == 0 : p.heads == 0, "argument `k` has ", p.kv_heads,
                    " heads, which does not divide the ", p.heads, " heads of `q`");
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "argument `dropout_p` must be in [0, 1); got ", dropout_p);
  if (mask.has_value()) {
    check_dim(*mask, "mask", 4);
    check_same_device(*mask, "mask", q, "q");
    check_dtype(*mask, "mask", {at::kBool, at::kFloat, at::kDouble, at::kBFloat16, at::kHalf});
    const std::vector<int64_t> expected{p.batch, p.heads, p.sq, p.sk};
    TORCH_CHECK_VALUE(mask->sizes() == at::IntArrayRef(expected), "argument `mask` has shape ", mask->sizes(),
                      "; expected ", at::IntArrayRef(expected), " (a broadcast view; stride 0 where broadcast)");
  }
  if (key_padding_mask.has_value()) {
    check_dim(*key_padding_mask, "key_padding_mask", 2);
    check_same_device(*key_padding_mask, "key_padding_mask", q, "q");
    check_dtype(*key_padding_mask, "key_padding_mask", {at::kBool});
    const std::vector<int64_t> expected{p.batch, p.sk};
    TORCH_CHECK_VALUE(key_padding_mask->sizes() == at::IntArrayRef(expected), "argument `key_padding_mask` has shape ",
                      key_padding_mask->sizes(), "; expected ", at::IntArrayRef(expected));
  }
  p.dim_padded = round_up(p.dim, q.scalar_type() == at::kDouble ? panel<double>() : panel<float>());
  p.scale = scale;
  p.dropout_p = dropout_p;
  p.seed = static_cast<uint64_t>(seed);
  p.causal = is_causal;
  p.mask = mask;
  p.padding = key_padding_mask;
  return p;
}

at::ScalarType lse_type(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         const std::optional<at::Tensor>& mask,
                                                         const std::optional<at::Tensor>& key_padding_mask,
                                                         bool is_causal, double scale, double dropout_p, int64_t seed) {
  const Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  at::Tensor out = empty_output({p.batch, p.heads, p.sq, p.dim}, q.options());
  at::Tensor lse = empty_output({p.batch, p.heads, p.sq}, q.options().dtype(lse_type(q)));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_forward_cpu",
                                 [&] { forward_kernel<scalar_t>(p, q, k, v, out, lse); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& key_padding_mask,
    bool is_causal, double scale, double dropout_p, int64_t seed) {
  const Problem p = make_problem(q, k, v, mask, key_padding_mask, is_causal, scale, dropout_p, seed);
  check_same_shape(grad_out, "grad_out", q, "q");
  check_same_dtype(grad_out, "grad_out", q, "q");
  check_same_shape(out, "out", q, "q");
  check_same_dtype(out, "out", q, "q");
  TORCH_CHECK_VALUE(lse.scalar_type() == lse_type(q) && lse.sizes() == q.sizes().slice(0, 3),
                    "argument `lse` has dtype ", lse.scalar_type(), " and shape ", lse.sizes(), "; expected ",
                    lse_type(q), " and ", q.sizes().slice(0, 3));
  const at::Tensor o = out.contiguous(), l = lse.contiguous();
  at::Tensor dq = empty_output({p.batch, p.heads, p.sq, p.dim}, q.options());
  at::Tensor dk = empty_output({p.batch, p.kv_heads, p.sk, p.dim}, q.options());
  at::Tensor dv = empty_output({p.batch, p.kv_heads, p.sk, p.dim}, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "attention_backward_cpu",
                                 [&] { backward_kernel<scalar_t>(p, grad_out, q, k, v, o, l, dq, dk, dv); });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("attention_forward", &attention_forward_cpu);
  m.impl("attention_backward", &attention_backward_cpu);
}

}  // namespace kernels
