// masked_softmax on the CPU: y = softmax(scale * x + mask) over the last dimension, and its backward
// dx = scale * y * (dy - sum(dy * y)). fp32 arithmetic for fp32 and bf16, fp64 for fp64.
//
// One row at a time per thread (at::parallel_for over rows), three passes over a row-sized fp32 scratch buffer that
// stays in L1/L2: scores and their max, exp and their sum, scale and store. The inner loops are written for the
// compiler's vectoriser (OpenMP simd reductions, a branch-free exp), so they use AVX2/AVX-512 under -march=native.
// Causal rows stop at column q (the rest is written as zeros); the mask is read through its broadcast strides.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <kernels/checks.h>
#include <kernels/masked_softmax.h>
#include <kernels/outputs.h>

namespace kernels {
namespace {

using masked_softmax::MaskIndexer;
using masked_softmax::MaskKind;

// exp(x) for x <= 0 in fp32, branch- and select-free so that loops over it vectorise: x = n ln2 + r with
// |r| <= ln2 / 2, exp(r) by a degree-7 polynomial (Cephes' expf coefficients, ~1 ulp), 2^n from the exponent bits.
// n is clamped at -127, whose exponent bits are those of 0.0f: arguments below about -88 (exp < 6e-39, including
// -inf for masked elements) give exactly 0.
inline float exp_nonpositive(float x) {
  const float n = std::floor(std::max(x * 1.44269504088896341f, -127.0f) + 0.5f);
  const float clamped = std::max(x, -88.0296919f);  // -127 ln2: keeps r finite where the result is 0
  float r = clamped - n * 0.693359375f;  // ln2 in two parts, so that n * ln2 is exact enough
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

template <typename acc_t>
constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();

// One row of the forward: x and the mask row in, y out; `buf` holds the row's scores then their exps.
template <typename scalar_t, typename acc_t, MaskKind kKind, bool kUnitStrideK>
void forward_row(const scalar_t* __restrict__ x, const void* mask, int64_t stride_k, scalar_t* __restrict__ y,
                 acc_t* __restrict__ buf, int64_t n, int64_t sk, acc_t scale) {
  acc_t max = kNegInf<acc_t>;
  const int64_t step = kUnitStrideK ? 1 : stride_k;
  if constexpr (kKind == MaskKind::kNone) {
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t s = scale * static_cast<acc_t>(x[j]);
      buf[j] = s;
      max = std::max(max, s);
    }
  } else if constexpr (kKind == MaskKind::kBool) {
    const bool* __restrict__ keep = static_cast<const bool*>(mask);
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t s = keep[j * step] ? scale * static_cast<acc_t>(x[j]) : kNegInf<acc_t>;
      buf[j] = s;
      max = std::max(max, s);
    }
  } else {
    const scalar_t* __restrict__ add = static_cast<const scalar_t*>(mask);
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < n; ++j) {
      const acc_t a = static_cast<acc_t>(add[j * step]);
      const acc_t s = a == kNegInf<acc_t> ? kNegInf<acc_t> : scale * static_cast<acc_t>(x[j]) + a;  // -inf hides
      buf[j] = s;
      max = std::max(max, s);
    }
  }
  if (max == kNegInf<acc_t>) max = 0;  // fully masked row: every exp below is exp(-inf) = 0
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t e = exp_nonpositive(buf[j] - max);
    buf[j] = e;
    sum += e;
  }
  // Zeros, not NaN, for a fully masked row (sum = 0). A NaN or +inf kept score makes the sum NaN (the max above may
  // have dropped it, but exp(nan - max) and exp(inf - inf) are NaN), and `sum != 0` keeps it: an all-NaN row, as
  // torch.softmax (`sum > 0` is false for NaN and gave [0, nan, 0, 0]).
  const acc_t inv = sum != 0 ? acc_t(1) / sum : acc_t(0);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = static_cast<scalar_t>(buf[j] * inv);
  for (int64_t j = n; j < sk; ++j) y[j] = scalar_t(0);  // beyond the causal limit
}

template <typename scalar_t, MaskKind kKind, bool kUnitStrideK>
void forward_rows(const at::Tensor& x, const c10::optional<at::Tensor>& mask, at::Tensor& y, double scale,
                  bool is_causal) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t sk = x.size(-1);
  const int64_t rows = x.numel() / sk;
  const MaskIndexer indexer = masked_softmax::mask_indexer(mask, x.sizes());
  const scalar_t* px = x.const_data_ptr<scalar_t>();
  scalar_t* py = y.mutable_data_ptr<scalar_t>();
  // The expanded view's data pointer is the mask's own: element offsets come from the indexer.
  const char* pm = mask.has_value() ? static_cast<const char*>(mask->const_data_ptr()) : nullptr;
  const int64_t mask_item = mask.has_value() ? mask->element_size() : 0;
  const int64_t grain = std::max<int64_t>(1, 16384 / sk);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(sk);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = is_causal ? std::min(sk, row % indexer.sq + 1) : sk;  // top-left: query q sees j <= q
      const void* mask_row = pm == nullptr ? nullptr : pm + indexer.row_offset(row) * mask_item;
      forward_row<scalar_t, acc_t, kKind, kUnitStrideK>(px + row * sk, mask_row, indexer.stride_k, py + row * sk,
                                                       buf.data(), n, sk, static_cast<acc_t>(scale));
    }
  });
}

template <typename scalar_t>
void forward_dispatch(const at::Tensor& x, const c10::optional<at::Tensor>& mask, at::Tensor& y, double scale,
                      bool is_causal) {
  const MaskKind kind = masked_softmax::mask_kind(mask);
  const bool unit = !mask.has_value() || mask->expand(x.sizes()).stride(-1) == 1;
  switch (kind) {
    case MaskKind::kNone:
      return forward_rows<scalar_t, MaskKind::kNone, true>(x, mask, y, scale, is_causal);
    case MaskKind::kBool:
      return unit ? forward_rows<scalar_t, MaskKind::kBool, true>(x, mask, y, scale, is_causal)
                  : forward_rows<scalar_t, MaskKind::kBool, false>(x, mask, y, scale, is_causal);
    case MaskKind::kAdditive:
      return unit ? forward_rows<scalar_t, MaskKind::kAdditive, true>(x, mask, y, scale, is_causal)
                  : forward_rows<scalar_t, MaskKind::kAdditive, false>(x, mask, y, scale, is_causal);
  }
}

// One row of the backward: dx = scale * y * (dy - sum(dy * y)).
template <typename scalar_t, typename acc_t>
void backward_row(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ y, scalar_t* __restrict__ dx,
                  int64_t sk, acc_t scale) {
  acc_t dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t j = 0; j < sk; ++j) dot += static_cast<acc_t>(dy[j]) * static_cast<acc_t>(y[j]);
#pragma omp simd
  for (int64_t j = 0; j < sk; ++j) {
    dx[j] = static_cast<scalar_t>(scale * static_cast<acc_t>(y[j]) * (static_cast<acc_t>(dy[j]) - dot));
  }
}

template <typename scalar_t>
void backward_rows(const at::Tensor& dy, const at::Tensor& y, at::Tensor& dx, double scale) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t sk = y.size(-1);
  const int64_t rows = y.numel() / sk;
  const scalar_t* pdy = dy.const_data_ptr<scalar_t>();
  const scalar_t* py = y.const_data_ptr<scalar_t>();
  scalar_t* pdx = dx.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / sk), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      backward_row<scalar_t, acc_t>(pdy + row * sk, py + row * sk, pdx + row * sk, sk, static_cast<acc_t>(scale));
    }
  });
}

at::Tensor masked_softmax_forward_cpu(const at::Tensor& x, const c10::optional<at::Tensor>& mask, double scale,
                                      bool is_causal) {
  masked_softmax::check_forward(x, mask, is_causal);
  check_dtype(x, "x", {at::kFloat, at::kDouble, at::kBFloat16});
  const at::Tensor input = x.contiguous();
  at::Tensor y = empty_output_like(input);
  if (input.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "masked_softmax_forward_cpu", [&] {
    forward_dispatch<scalar_t>(input, mask, y, scale, is_causal);
  });
  return y;
}

at::Tensor masked_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& y, double scale) {
  masked_softmax::check_backward(grad, y);
  check_dtype(y, "y", {at::kFloat, at::kDouble, at::kBFloat16});
  const at::Tensor dy = grad.contiguous();
  const at::Tensor probs = y.contiguous();
  at::Tensor dx = empty_output_like(probs);
  if (probs.numel() == 0) return dx;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, probs.scalar_type(), "masked_softmax_backward_cpu", [&] {
    backward_rows<scalar_t>(dy, probs, dx, scale);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("masked_softmax_forward", &masked_softmax_forward_cpu);
  m.impl("masked_softmax_backward", &masked_softmax_backward_cpu);
}

}  // namespace kernels
