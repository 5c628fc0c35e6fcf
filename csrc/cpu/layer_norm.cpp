// Layer norm and RMS norm on the CPU, with the fused residual add ("Add & Norm"), forward and backward.
//
// Layout: x, residual, y, h, dy, dh, dx are (M, N) rows, contiguous; weight and bias (N,); mean and rstd (M,) in the
// accumulation type acc_t (float for float and bfloat16, double for double). RMS norm is layer norm with the mean
// fixed at 0 (no centring, no mean(g) term in the backward), so one code path serves both; for RMS norm `mean` is an
// empty tensor.
//
// Parallelism: at::parallel_for over rows. Each row is worked on in L1: the loops are plain contiguous loops that the
// compiler vectorises (`omp simd` lets it reorder the fp reductions). bfloat16 rows are first widened into a per-thread
// float buffer. Statistics take one pass (two when the shift misled) over the row shifted near its mean (see
// row_moments), exact for zero-variance rows; the sums of a row longer than kMomentsChunk elements are taken per
// chunk and added pairwise, so the rounding error grows with log2(N / kMomentsChunk), not with N (one accumulator
// over a 9M-element row lost 5e-4). The backward's row sums are chunked and added pairwise the same way.
//
// Backward determinism: the rows are cut into a fixed number of blocks (independent of the thread count); each block
// sums its dweight/dbias contributions into its own row of a (blocks, N) buffer, and a second pass sums the blocks
// in order, column by column.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <kernels/checks.h>
#include <kernels/layer_norm.h>
#include <kernels/outputs.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>
#include <type_traits>
#include <vector>

namespace kernels {
namespace {

constexpr int64_t kMaxBlocks = 32;  // row blocks of the backward's dweight/dbias partial sums
// Elements per chunk of a row's statistics: rows up to this length take one chunk; longer ones add their chunks'
// sums pairwise, so a SIMD lane's run of adds stays short (see shifted_sums; 4096-element chunks left rstd 5-14
// half-ulps off on bf16 inputs).
constexpr int64_t kMomentsChunk = 1024;
// Elements per chunk of the backward's row sums; a chunk stays in L1 (16 KiB of fp32).
constexpr int64_t kGradientChunk = 4096;
// Leading elements of a row whose mean is the shift of its statistics (see row_moments).
constexpr int64_t kShiftSample = 32;

// The mean and the centred sum of squares (M2) of a row; for RMS norm the mean is fixed at 0 and M2 is the plain sum
// of squares.
template <typename acc_t>
struct Moments {
  acc_t mean = 0, m2 = 0;
};

// Adds per-chunk sums pairwise (a binary tree over `sums`, one pair per chunk) and returns the total: the rounding
// error grows with log2(chunks), not with the number of chunks.
template <typename acc_t>
std::pair<acc_t, acc_t> add_pairwise(std::vector<std::pair<acc_t, acc_t>>& sums) {
  const int64_t chunks = static_cast<int64_t>(sums.size());
  for (int64_t step = 1; step < chunks; step *= 2) {
    for (int64_t c = 0; c + step < chunks; c += 2 * step) {
      sums[c].first += sums[c + step].first;
      sums[c].second += sums[c + step].second;
    }
  }
  return sums[0];
}

// S1 = sum(x - k) and S2 = sum((x - k)^2) over row[0 : n], in one pass over its two halves side by side: twice the
// accumulators, so a SIMD lane adds half as many terms in a row (on inputs from a coarse grid, bf16 values, the
// roundings of a lane's adds do not average out: at N = 768, 8 lanes left rstd up to 11 half-ulps off, 16 up to 7;
// with the halves 6 and 3; torch, summing in cascade, 2-3), and the adds of the two halves overlap.
template <typename acc_t>
std::pair<acc_t, acc_t> shifted_sums(const acc_t* row, int64_t n, acc_t k) {
  const int64_t half = n / 2;
  const acc_t* second = row + half;
  acc_t sum_a = 0, squares_a = 0, sum_b = 0, squares_b = 0;
#pragma omp simd reduction(+ : sum_a, squares_a, sum_b, squares_b)
  for (int64_t j = 0; j < half; ++j) {
    const acc_t a = row[j] - k, b = second[j] - k;
    sum_a += a;
    squares_a += a * a;
    sum_b += b;
    squares_b += b * b;
  }
  if (n % 2 != 0) {
    const acc_t last = row[n - 1] - k;
    sum_b += last;
    squares_b += last * last;
  }
  return {sum_a + sum_b, squares_a + squares_b};
}

// shifted_sums over row[0 : n] by chunks of kMomentsChunk elements, added pairwise (`scratch`: one pair per chunk).
template <typename acc_t>
std::pair<acc_t, acc_t> row_shifted_sums(const acc_t* row, int64_t n, acc_t k,
                                         std::vector<std::pair<acc_t, acc_t>>& scratch) {
  if (n <= kMomentsChunk) return shifted_sums(row, n, k);
  scratch.resize((n + kMomentsChunk - 1) / kMomentsChunk);
  for (size_t c = 0; c < scratch.size(); ++c) {
    const int64_t begin = static_cast<int64_t>(c) * kMomentsChunk;
    scratch[c] = shifted_sums(row + begin, std::min(kMomentsChunk, n - begin), k);
  }
  return add_pairwise(scratch);
}

// The moments of row[0 : n] from the sums around a shift k: mean = k + S1 / n, M2 = S2 - S1^2 / n. The subtraction
// costs log2(S2 / M2) bits, with S2 / M2 = 1 + n (mean - k)^2 / M2, so k must sit near the mean: k = x0 + the mean
// of x - x0 over the first kShiftSample elements (x0 = row[0]; for iid rows k is then within sd / sqrt(32) of the
// mean and S2 / M2 ~ 1.03). When the sample misled (a sorted row, outliers up front) and k is off by over half a
// standard deviation (S1^2 / n > M2 / 4), the sums are taken again around k + S1 / n (the corrected two-pass
// algorithm of Chan, Golub and LeVeque), so S2 / M2 <= 1.25 always. Exact for constant rows (k = x0, every
// x - k = 0). A NaN or Inf makes M2 NaN (inf - inf); the test below is false on NaN or Inf.
// (The earlier statistics shifted each chunk by its first element, a single sample, a standard deviation off as a
// rule: rstd came out 10-85 half-ulps off, enough to push the fp32 weight gradient summed over 125 rows past the
// fixed fp32 table.) RMS norm takes the plain sum of squares (k = 0).
template <typename acc_t>
Moments<acc_t> row_moments(const acc_t* row, int64_t n, bool rms, std::vector<std::pair<acc_t, acc_t>>& scratch) {
  if (rms) return {acc_t(0), row_shifted_sums(row, n, acc_t(0), scratch).second};
  const int64_t sample = std::min(n, kShiftSample);
  const acc_t first = row[0];
  acc_t sample_sum = 0;
#pragma omp simd reduction(+ : sample_sum)
  for (int64_t j = 0; j < sample; ++j) sample_sum += row[j] - first;
  acc_t k = first + sample_sum / sample;
  auto [sum, squares] = row_shifted_sums(row, n, k, scratch);
  if (sum * sum > acc_t(0.2) * n * squares) {  // n (mean - k)^2 > M2 / 4
    k += sum / n;
    std::tie(sum, squares) = row_shifted_sums(row, n, k, scratch);
  }
  const acc_t correction = sum / n;
  return {k + correction, squares - correction * sum};
}

// The two row sums of the backward, sum(g) and sum(g * xhat) with g = dy * weight and xhat = (h - mean) * rstd, over
// row[0 : n]: per chunk of kGradientChunk elements, the chunks' sums added pairwise (`scratch` holds one pair per
// chunk).
template <typename acc_t>
std::pair<acc_t, acc_t> gradient_sums(const acc_t* dy, const acc_t* h, const acc_t* weight, acc_t mu, acc_t r,
                                      int64_t n, std::vector<std::pair<acc_t, acc_t>>& scratch) {
  const int64_t chunks = std::max<int64_t>(1, (n + kGradientChunk - 1) / kGradientChunk);
  scratch.resize(chunks);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kGradientChunk, end = std::min(n, begin + kGradientChunk);
    acc_t sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = begin; j < end; ++j) {
      const acc_t g = dy[j] * weight[j];
      sum_g += g;
      sum_gx += g * (h[j] - mu) * r;
    }
    scratch[c] = {sum_g, sum_gx};
  }
  return add_pairwise(scratch);
}

// The row as acc_t: the pointer itself when scalar_t is acc_t, else a widened copy in `buffer`.
template <typename scalar_t, typename acc_t>
const acc_t* widen(const scalar_t* row, acc_t* buffer, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return row;
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) buffer[j] = static_cast<acc_t>(row[j]);
    return buffer;
  }
}

// h = x + residual, rounded to scalar_t and written to `h`; returns the row as acc_t (h itself, or `buffer`).
template <typename scalar_t, typename acc_t>
const acc_t* add_residual(const scalar_t* x, const scalar_t* residual, scalar_t* h, acc_t* buffer, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    h[j] = static_cast<scalar_t>(static_cast<acc_t>(x[j]) + static_cast<acc_t>(residual[j]));
  }
  return widen<scalar_t, acc_t>(h, buffer, n);
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* residual, const at::opmath_type<scalar_t>* weight,
                  const at::opmath_type<scalar_t>* bias, scalar_t* y, scalar_t* h, at::opmath_type<scalar_t>* mean,
                  at::opmath_type<scalar_t>* rstd, int64_t m, int64_t n, double eps, bool rms) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 16384 / n);
  at::parallel_for(0, m, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buffer(std::is_same_v<scalar_t, acc_t> ? 0 : n);
    std::vector<std::pair<acc_t, acc_t>> chunks;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t offset = i * n;
      const acc_t* row = residual != nullptr
          ? add_residual<scalar_t, acc_t>(x + offset, residual + offset, h + offset, buffer.data(), n)
          : widen<scalar_t, acc_t>(x + offset, buffer.data(), n);
      // A NaN (or, for layer norm, an Inf: inf - inf) makes the moments NaN and the whole row NaN, as torch.
      const Moments<acc_t> moments = row_moments(row, n, rms, chunks);
      const acc_t mu = moments.mean;
      if (!rms) mean[i] = mu;
      // max(NaN, 0) is NaN (std::max returns its first argument when the comparison is false).
      const acc_t r = acc_t(1) / std::sqrt(std::max(moments.m2, acc_t(0)) / n + static_cast<acc_t>(eps));
      rstd[i] = r;
      scalar_t* out = y + offset;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = static_cast<scalar_t>((row[j] - mu) * r * weight[j] + bias[j]);
    }
  });
}

// dx for the rows [begin, end), and their dweight/dbias contributions added to partial_dw / partial_db.
template <typename scalar_t, bool kHasDh>
void backward_rows(const scalar_t* dy, const scalar_t* dh, const scalar_t* h, const at::opmath_type<scalar_t>* mean,
                   const at::opmath_type<scalar_t>* rstd, const at::opmath_type<scalar_t>* weight, scalar_t* dx,
                   at::opmath_type<scalar_t>* partial_dw, at::opmath_type<scalar_t>* partial_db, int64_t begin,
                   int64_t end, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kWiden = !std::is_same_v<scalar_t, acc_t>;
  std::vector<acc_t> h_buffer(kWiden ? n : 0), dy_buffer(kWiden ? n : 0);
  std::vector<std::pair<acc_t, acc_t>> chunks;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t offset = i * n;
    const acc_t* hr = widen<scalar_t, acc_t>(h + offset, h_buffer.data(), n);
    const acc_t* dyr = widen<scalar_t, acc_t>(dy + offset, dy_buffer.data(), n);
    const acc_t mu = mean != nullptr ? mean[i] : acc_t(0);
    const acc_t r = rstd[i];
    // Row means of g = dy * weight and of g * xhat, with xhat = (h - mean) * rstd.
    const auto [sum_g, sum_gx] = gradient_sums(dyr, hr, weight, mu, r, n, chunks);
    const acc_t c1 = sum_gx / n;
    const acc_t c2 = mean != nullptr ? sum_g / n : acc_t(0);  // RMS norm has no mean(g) term
    scalar_t* out = dx + offset;
    const scalar_t* dhr = kHasDh ? dh + offset : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const acc_t xhat = (hr[j] - mu) * r;
      acc_t grad = (dyr[j] * weight[j] - xhat * c1 - c2) * r;
      if constexpr (kHasDh) grad += static_cast<acc_t>(dhr[j]);
      out[j] = static_cast<scalar_t>(grad);
      partial_dw[j] += dyr[j] * xhat;
      partial_db[j] += dyr[j];
    }
  }
}

// The row dtypes the CPU kernels serve.
const RowDtypes kRowDtypes = {at::kFloat, at::kDouble, at::kBFloat16};

// The parameter as a contiguous acc-typed (N,) tensor, or `fill` everywhere when absent.
at::Tensor parameter_or(const c10::optional<at::Tensor>& t, int64_t n, at::ScalarType acc, double fill) {
  if (t.has_value()) return t->to(acc).contiguous();
  return at::full({n}, fill, at::TensorOptions().dtype(acc));
}

// The second reduction of the backward: (blocks, N) partial sums -> (N,), summing the blocks in order.
template <typename acc_t>
void sum_blocks_into(const acc_t* partial, acc_t* out, int64_t blocks, int64_t n) {
  at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
    std::fill(out + begin, out + end, acc_t(0));
    for (int64_t block = 0; block < blocks; ++block) {
      const acc_t* row = partial + block * n;
#pragma omp simd
      for (int64_t j = begin; j < end; ++j) out[j] += row[j];
    }
  });
}

at::Tensor sum_blocks(const at::Tensor& partial, at::ScalarType out_dtype) {
  at::Tensor total = at::empty({partial.size(1)}, partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "layer_norm_sum_blocks", [&] {
    sum_blocks_into<scalar_t>(partial.const_data_ptr<scalar_t>(), total.mutable_data_ptr<scalar_t>(),
                              partial.size(0), partial.size(1));
  });
  return total.to(out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_norm_forward_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, double eps, bool rms) {
  check_forward_arguments(x, residual, weight, bias, kRowDtypes);
  const int64_t m = x.size(0), n = x.size(1);
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.has_value() ? residual->contiguous() : at::Tensor();
  const at::Tensor w = parameter_or(weight, n, acc, 1.0);
  const at::Tensor b = parameter_or(bias, n, acc, 0.0);
  at::Tensor y = empty_output_like(xc);
  at::Tensor h = residual.has_value() ? empty_output_like(xc) : at::empty({0}, x.options());
  at::Tensor mean = empty_output({rms ? 0 : m}, x.options().dtype(acc));
  at::Tensor rstd = empty_output({m}, x.options().dtype(acc));
  if (x.numel() == 0) return {y, h, mean, rstd};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "layer_norm_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    forward_rows<scalar_t>(xc.const_data_ptr<scalar_t>(),
                           residual.has_value() ? rc.const_data_ptr<scalar_t>() : nullptr,
                           w.const_data_ptr<acc_t>(), b.const_data_ptr<acc_t>(), y.mutable_data_ptr<scalar_t>(),
                           residual.has_value() ? h.mutable_data_ptr<scalar_t>() : nullptr,
                           rms ? nullptr : mean.mutable_data_ptr<acc_t>(), rstd.mutable_data_ptr<acc_t>(), m, n, eps,
                           rms);
  });
  return {y, h, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& dy, const c10::optional<at::Tensor>& dh, const at::Tensor& h, const at::Tensor& mean,
    const at::Tensor& rstd, const c10::optional<at::Tensor>& weight, bool has_bias, bool rms) {
  const at::ScalarType acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_backward_arguments(dy, dh, h, mean, rstd, weight, rms, kRowDtypes, acc);
  const int64_t m = h.size(0), n = h.size(1);
  const at::Tensor dyc = dy.contiguous(), hc = h.contiguous();
  const at::Tensor dhc = dh.has_value() ? dh->contiguous() : at::Tensor();
  const at::Tensor meanc = mean.contiguous(), rstdc = rstd.contiguous();
  const at::Tensor w = parameter_or(weight, n, acc, 1.0);
  at::Tensor dx = empty_output_like(hc);
  const int64_t blocks = std::max<int64_t>(1, std::min(m, kMaxBlocks));
  const int64_t rows_per_block = m == 0 ? 0 : (m + blocks - 1) / blocks;
  at::Tensor partial_dw = at::zeros({blocks, n}, h.options().dtype(acc));
  at::Tensor partial_db = at::zeros({blocks, n}, h.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, h.scalar_type(), "layer_norm_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = dyc.const_data_ptr<scalar_t>();
    const scalar_t* hp = hc.const_data_ptr<scalar_t>();
    const scalar_t* dhp = dh.has_value() ? dhc.const_data_ptr<scalar_t>() : nullptr;
    const acc_t* meanp = rms ? nullptr : meanc.const_data_ptr<acc_t>();
    const acc_t* rstdp = rstdc.const_data_ptr<acc_t>();
    const acc_t* wp = w.const_data_ptr<acc_t>();
    scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
    acc_t* dwp = partial_dw.mutable_data_ptr<acc_t>();
    acc_t* dbp = partial_db.mutable_data_ptr<acc_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
      for (int64_t block = first_block; block < last_block; ++block) {
        const int64_t begin = block * rows_per_block, end = std::min(m, begin + rows_per_block);
        const auto rows = dhp != nullptr ? &backward_rows<scalar_t, true> : &backward_rows<scalar_t, false>;
        rows(dyp, dhp, hp, meanp, rstdp, wp, dxp, dwp + block * n, dbp + block * n, begin, end, n);
      }
    });
  });
  const at::ScalarType param_dtype = weight.has_value() ? weight->scalar_type() : h.scalar_type();
  at::Tensor dweight = weight.has_value() ? sum_blocks(partial_dw, param_dtype) : at::empty({0}, h.options());
  at::Tensor dbias = has_bias ? sum_blocks(partial_db, param_dtype) : at::empty({0}, h.options());
  return {dx, dweight, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(kernels, CPU, m) {
  m.impl("layer_norm_forward", &layer_norm_forward_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
}

}  // namespace kernels
