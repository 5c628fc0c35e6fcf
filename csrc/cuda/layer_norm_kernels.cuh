// The CUDA kernels of layer norm and RMS norm, with the fused residual add ("Add & Norm"): device code only, launched
// by layer_norm.cu (the plans, the ops and their registration). Layouts: layer_norm.cu.
//
// Forward: one block per row. A thread owns the 16-byte packs threadIdx.x, threadIdx.x + blockDim.x, ... of the row.
// When the row fits (kPacks > 0 packs per thread, at most 8), it is held in registers: sum -> mean, centred sum of
// squares -> rstd (two-pass, exact for zero-variance rows), then the output. Longer rows (kPacks == 0) loop over
// their packs three times; the second and third passes re-read h (written by the same thread in the first pass when
// there is a residual, else x), each thread summing in two levels (TwoLevelSum: rows up to 16M elements keep the
// statistics within the tolerance rule). Rows whose length or pointers do not allow 16-byte packs take the looped
// kernel with one element per pack.
//
// Backward (deterministic, no atomics): G blocks each own a contiguous range of rows. Per row, the block reduces
// mean(g * xhat) and mean(g) (g = dy * weight), writes dx = rstd * (g - xhat * mean(g * xhat) - mean(g)) (+ dh), and
// each thread adds dy * xhat and dy for its columns into its own dweight/dbias partial sums (registers when cached, its
// own entries of the (G, N) fp32 buffer when looped). A second kernel sums the G partial rows in order per column.
#pragma once

#include <cstdint>

namespace kernels {
namespace {

constexpr int kMaxThreads = 512;
constexpr int kMaxForwardPacks = 8;   // 16-byte packs per thread held in registers; longer rows loop
constexpr int kMaxBackwardPacks = 2;  // the backward keeps xhat, dy, dweight and dbias per element

template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// The sums of `a` and `b` over the block (blockDim.x a multiple of 32), returned to every thread.
// `shared` holds 64 floats; the leading barrier lets a block call this in a loop.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* shared) {
  a = warp_sum(a);
  b = warp_sum(b);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) {
    shared[warp] = a;
    shared[32 + warp] = b;
  }
  __syncthreads();
  a = lane < warps ? shared[lane] : 0.f;
  b = lane < warps ? shared[32 + lane] : 0.f;
  return make_float2(warp_sum(a), warp_sum(b));
}

// A thread's running fp32 sum over the packs of a looped row, in two levels: `part` takes kFlush packs, then moves into
// `total`. One accumulator over a 16M-element row (32K values per thread at 512 threads) loses about sqrt(32K) ulps
// of its total; two levels lose about sqrt(kFlush) + sqrt(32K / kFlush). NaN and Inf pass through unchanged.
struct TwoLevelSum {
  static constexpr int kFlush = 64;
  float total = 0.f, part = 0.f;
  int count = 0;
  __device__ __forceinline__ void add(float x) {
    part += x;
    if (++count == kFlush) {
      total += part;
      part = 0.f;
      count = 0;
    }
  }
  __device__ __forceinline__ float value() const { return total + part; }
};

template <typename scalar_t, int kVec>
__device__ __forceinline__ void load_pack(const scalar_t* base, int64_t pack, float (&out)[kVec]) {
  const Pack<scalar_t, kVec> p = reinterpret_cast<const Pack<scalar_t, kVec>*>(base)[pack];
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = static_cast<float>(p.v[k]);
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void store_pack(scalar_t* base, int64_t pack, const float (&in)[kVec]) {
  Pack<scalar_t, kVec> p;
#pragma unroll
  for (int k = 0; k < kVec; ++k) p.v[k] = static_cast<scalar_t>(in[k]);
  reinterpret_cast<Pack<scalar_t, kVec>*>(base)[pack] = p;
}

// The pack of the row to normalise: x, or h = x + residual rounded to scalar_t (and stored).
template <typename scalar_t, int kVec>
__device__ __forceinline__ void load_h(const scalar_t* x, const scalar_t* residual, scalar_t* h, int64_t pack,
                                       float (&out)[kVec]) {
  load_pack<scalar_t, kVec>(x, pack, out);
  if (residual != nullptr) {
    float r[kVec];
    load_pack<scalar_t, kVec>(residual, pack, r);
    Pack<scalar_t, kVec> rounded;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      rounded.v[k] = static_cast<scalar_t>(out[k] + r[k]);
      out[k] = static_cast<float>(rounded.v[k]);
    }
    reinterpret_cast<Pack<scalar_t, kVec>*>(h)[pack] = rounded;
  }
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void write_y(const scalar_t* weight, const scalar_t* bias, scalar_t* y, int64_t pack,
                                        const float (&v)[kVec], float mu, float r) {
  float w[kVec], b[kVec], out[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) w[k] = 1.f, b[k] = 0.f;
  if (weight != nullptr) load_pack<scalar_t, kVec>(weight, pack, w);
  if (bias != nullptr) load_pack<scalar_t, kVec>(bias, pack, b);
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = (v[k] - mu) * r * w[k] + b[k];
  store_pack<scalar_t, kVec>(y, pack, out);
}

// An explicit minimum of one CTA per SM: without it ptxas held the looped 16-bit variants (kPacks = 0) at 32
// registers with a 4-byte spill on sm_80; with it they take 40 and spill nothing.
template <typename scalar_t, int kVec, int kPacks>
__global__ void __launch_bounds__(kMaxThreads, 1) layer_norm_forward_kernel(
    const scalar_t* __restrict__ x, const scalar_t* __restrict__ residual, const scalar_t* __restrict__ weight,
    const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, scalar_t* __restrict__ h, float* __restrict__ mean,
    float* __restrict__ rstd, int64_t n, float eps) {
  __shared__ float shared[64];
  const int64_t row = blockIdx.x;
  const int64_t packs = n / kVec;
  const scalar_t* xr = x + row * n;
  const scalar_t* rr = residual != nullptr ? residual + row * n : nullptr;
  scalar_t* hr = residual != nullptr ? h + row * n : nullptr;
  scalar_t* yr = y + row * n;
  const bool rms = mean == nullptr;
  float mu = 0.f, r;
  if constexpr (kPacks > 0) {
    float v[kPacks][kVec];
    float sum = 0.f;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t pack = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[p][k] = 0.f;
      if (pack < packs) load_h<scalar_t, kVec>(xr, rr, hr, pack, v[p]);
#pragma unroll
      for (int k = 0; k < kVec; ++k) sum += v[p][k];
    }
    if (!rms) mu = block_sum2(sum, 0.f, shared).x / n;
    float squares = 0.f;
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      if (threadIdx.x + static_cast<int64_t>(p) * blockDim.x < packs) {
#pragma unroll
        for (int k = 0; k < kVec; ++k) squares += (v[p][k] - mu) * (v[p][k] - mu);
      }
    }
    r = rsqrtf(block_sum2(squares, 0.f, shared).x / n + eps);
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t pack = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (pack < packs) write_y<scalar_t, kVec>(weight, bias, yr, pack, v[p], mu, r);
    }
  } else {
    // Looped: the passes after the first re-read h (this thread wrote its packs of h) or x.
    const scalar_t* source = residual != nullptr ? hr : xr;
    float v[kVec];
    TwoLevelSum sum;
    for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
      load_h<scalar_t, kVec>(xr, rr, hr, pack, v);
      float pack_sum = 0.f;
#pragma unroll
      for (int k = 0; k < kVec; ++k) pack_sum += v[k];
      sum.add(pack_sum);
    }
    if (!rms) mu = block_sum2(sum.value(), 0.f, shared).x / n;
    TwoLevelSum squares;
    for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
      load_pack<scalar_t, kVec>(source, pack, v);
      float pack_squares = 0.f;
#pragma unroll
      for (int k = 0; k < kVec; ++k) pack_squares += (v[k] - mu) * (v[k] - mu);
      squares.add(pack_squares);
    }
    r = rsqrtf(block_sum2(squares.value(), 0.f, shared).x / n + eps);
    for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
      load_pack<scalar_t, kVec>(source, pack, v);
      write_y<scalar_t, kVec>(weight, bias, yr, pack, v, mu, r);
    }
  }
  if (threadIdx.x == 0) {
    if (!rms) mean[row] = mu;
    rstd[row] = r;
  }
}

// Per pack: xhat, dy and g = dy * weight, and the pack's contributions to sum(g * xhat) and sum(g).
template <typename scalar_t, int kVec>
__device__ __forceinline__ void gradient_terms(const scalar_t* hr, const scalar_t* dyr, const scalar_t* weight,
                                               int64_t pack, float mu, float r, float (&xhat)[kVec],
                                               float (&dy)[kVec], float (&g)[kVec], float& sum_gx, float& sum_g) {
  load_pack<scalar_t, kVec>(hr, pack, xhat);
  load_pack<scalar_t, kVec>(dyr, pack, dy);
  float w[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) w[k] = 1.f;
  if (weight != nullptr) load_pack<scalar_t, kVec>(weight, pack, w);
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    xhat[k] = (xhat[k] - mu) * r;
    g[k] = dy[k] * w[k];
    sum_gx += g[k] * xhat[k];
    sum_g += g[k];
  }
}

template <typename scalar_t, int kVec>
__device__ __forceinline__ void write_dx(const scalar_t* dhr, scalar_t* dxr, int64_t pack, const float (&xhat)[kVec],
                                         const float (&g)[kVec], float c1, float c2, float r) {
  float dh[kVec], out[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) dh[k] = 0.f;
  if (dhr != nullptr) load_pack<scalar_t, kVec>(dhr, pack, dh);
#pragma unroll
  for (int k = 0; k < kVec; ++k) out[k] = (g[k] - xhat[k] * c1 - c2) * r + dh[k];
  store_pack<scalar_t, kVec>(dxr, pack, out);
}

template <typename scalar_t, int kVec, int kPacks>
__global__ void __launch_bounds__(kMaxThreads) layer_norm_backward_kernel(
    const scalar_t* __restrict__ dy, const scalar_t* __restrict__ dh, const scalar_t* __restrict__ h,
    const scalar_t* __restrict__ weight, const float* __restrict__ mean, const float* __restrict__ rstd,
    scalar_t* __restrict__ dx, float* __restrict__ partial_dw, float* __restrict__ partial_db, int64_t m, int64_t n,
    int64_t rows_per_block) {
  __shared__ float shared[64];
  const int64_t packs = n / kVec;
  const int64_t first = blockIdx.x * rows_per_block;
  const int64_t last = first + rows_per_block < m ? first + rows_per_block : m;
  float* dw_row = partial_dw + blockIdx.x * n;  // this block's partial sums; each thread owns its packs' entries
  float* db_row = partial_db + blockIdx.x * n;
  if constexpr (kPacks > 0) {
    float dw[kPacks][kVec], db[kPacks][kVec];
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) dw[p][k] = db[p][k] = 0.f;
    }
    for (int64_t row = first; row < last; ++row) {
      const float mu = mean != nullptr ? mean[row] : 0.f, r = rstd[row];
      float xhat[kPacks][kVec], g[kPacks][kVec], dyv[kPacks][kVec];
      float sum_gx = 0.f, sum_g = 0.f;
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        const int64_t pack = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
        if (pack < packs) {
          gradient_terms<scalar_t, kVec>(h + row * n, dy + row * n, weight, pack, mu, r, xhat[p], dyv[p], g[p],
                                         sum_gx, sum_g);
        }
      }
      const float2 sums = block_sum2(sum_gx, sum_g, shared);
      const float c1 = sums.x / n, c2 = mean != nullptr ? sums.y / n : 0.f;
#pragma unroll
      for (int p = 0; p < kPacks; ++p) {
        const int64_t pack = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
        if (pack < packs) {
          write_dx<scalar_t, kVec>(dh != nullptr ? dh + row * n : nullptr, dx + row * n, pack, xhat[p], g[p], c1,
                                   c2, r);
#pragma unroll
          for (int k = 0; k < kVec; ++k) {
            dw[p][k] += dyv[p][k] * xhat[p][k];
            db[p][k] += dyv[p][k];
          }
        }
      }
    }
#pragma unroll
    for (int p = 0; p < kPacks; ++p) {
      const int64_t pack = threadIdx.x + static_cast<int64_t>(p) * blockDim.x;
      if (pack < packs) {
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          dw_row[pack * kVec + k] = dw[p][k];
          db_row[pack * kVec + k] = db[p][k];
        }
      }
    }
  } else {
    for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) dw_row[pack * kVec + k] = db_row[pack * kVec + k] = 0.f;
    }
    for (int64_t row = first; row < last; ++row) {
      const float mu = mean != nullptr ? mean[row] : 0.f, r = rstd[row];
      float xhat[kVec], g[kVec], dyv[kVec];
      TwoLevelSum sum_gx, sum_g;
      for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
        float pack_gx = 0.f, pack_g = 0.f;
        gradient_terms<scalar_t, kVec>(h + row * n, dy + row * n, weight, pack, mu, r, xhat, dyv, g, pack_gx, pack_g);
        sum_gx.add(pack_gx);
        sum_g.add(pack_g);
      }
      const float2 sums = block_sum2(sum_gx.value(), sum_g.value(), shared);
      const float c1 = sums.x / n, c2 = mean != nullptr ? sums.y / n : 0.f;
      for (int64_t pack = threadIdx.x; pack < packs; pack += blockDim.x) {
        float unused_gx = 0.f, unused_g = 0.f;
        gradient_terms<scalar_t, kVec>(h + row * n, dy + row * n, weight, pack, mu, r, xhat, dyv, g, unused_gx,
                                       unused_g);
        write_dx<scalar_t, kVec>(dh != nullptr ? dh + row * n : nullptr, dx + row * n, pack, xhat, g, c1, c2, r);
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          dw_row[pack * kVec + k] += dyv[k] * xhat[k];
          db_row[pack * kVec + k] += dyv[k];
        }
      }
    }
  }
}

// The second reduction: out[j] = sum over the G partial rows of partial[., j], in order.
template <typename scalar_t>
__global__ void sum_partials_kernel(const float* __restrict__ partial, scalar_t* __restrict__ out, int64_t groups,
                                    int64_t n) {
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= n) return;
  float total = 0.f;
  for (int64_t g = 0; g < groups; ++g) total += partial[g * n + j];
  out[j] = static_cast<scalar_t>(total);
}

}  // namespace
}  // namespace kernels
