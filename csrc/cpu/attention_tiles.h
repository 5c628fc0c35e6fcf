// Fused CPU attention: the vector and tile primitives of its kernels (32-byte vectors on GCC/Clang vector types,
// the register-tiled product kernel and torch's BLAS for the tile products, 8 x 8 transposes, the base-2 exponential).
// See attention_common.h for the layouts and the work split.
#pragma once

#include <ATen/native/CPUBlas.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

namespace kernels {
namespace cpu_attention {

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
// +0.0, so masked scores and results below 2^-126 become exactly 0. The clamp is written so that a NaN t stays NaN
// (`t < -127` is false for NaN; `t > -127 ? t : -127` would make it 0 and drop the NaN from the row): a NaN score
// reaches the row's sum and output (README, non-finite values). r is read from the mantissa of t + 1.5 * 2^23 (its
// low bits hold round(t)).
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
    t = t < -127.f ? V{} - 127.f : t;
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

// Whether x[0 : n] holds a NaN (the rare check before a row whose maximum is -inf is skipped: a max may drop NaN).
template <typename T>
inline bool any_nan(const T* x, int64_t n) {
  return std::any_of(x, x + n, [](T v) { return std::isnan(v); });
}

constexpr double kLog2e = 1.44269504088896340736, kLn2 = 0.69314718055994530942;

}  // namespace cpu_attention
}  // namespace kernels
