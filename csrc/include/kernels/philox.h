// Philox4x32-10, the counter-based generator of Triton's tl.rand, so a C++/CUDA kernel and a Triton kernel given the
// same 64-bit seed and element offset draw the same uniform number (and so the same dropout keep-mask).
//
// Triton's tl.rand(seed, offset): key = (seed & 0xffffffff, seed >> 32), counter = (offset & 0xffffffff,
// offset >> 32, 0, 0), ten rounds, the first output word; then uint32 -> float by reinterpreting it as int32,
// mapping negatives x to ~x, and multiplying by 4.6566127342e-10f (about 2^-31), giving a float in [0, 1).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KERNELS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KERNELS_HOST_DEVICE inline
#endif

namespace kernels {

KERNELS_HOST_DEVICE uint32_t philox_mulhi(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// The first 32-bit output word of Philox4x32-10 for counter (offset_lo, offset_hi, 0, 0) and key (seed_lo, seed_hi).
KERNELS_HOST_DEVICE uint32_t philox_first_word(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t a0 = c0, a2 = c2;
    c0 = philox_mulhi(0xCD9E8D57u, a2) ^ c1 ^ k0;
    c2 = philox_mulhi(0xD2511F53u, a0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * a2;
    c3 = 0xD2511F53u * a0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// tl.rand(seed, offset): a float in [0, 1), bit-identical to Triton's.
KERNELS_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t offset) {
  int32_t x = static_cast<int32_t>(philox_first_word(seed, offset));
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f;
}

// Dropout keeps an element when its uniform number is >= p (the comparison is in fp32, as in Triton).
KERNELS_HOST_DEVICE bool dropout_keep(uint64_t seed, uint64_t offset, float p) {
  return philox_uniform(seed, offset) >= p;
}

}  // namespace kernels
