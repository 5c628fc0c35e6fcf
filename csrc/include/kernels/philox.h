// Philox4x32-10 uniforms, bit-identical to Triton's tl.rand(seed, counter) for 32-bit counters: the counter block
// is (counter, 0, 0, 0), the key (seed low word, seed high word), and the first output word becomes a float in [0, 1)
// as triton.language.random.uint_to_uniform_float does. Dropout in every backend keeps an element where
// uniform >= p, so the C++, CUDA and Triton kernels (and kernels.feed_forward.dropout_keep_mask) draw the same mask.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace kernels {

C10_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint32_t counter) {
  uint32_t c0 = counter, c1 = 0, c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint64_t product_b = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint64_t product_a = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint32_t next0 = static_cast<uint32_t>(product_b >> 32) ^ c1 ^ k0;
    const uint32_t next2 = static_cast<uint32_t>(product_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(product_b);
    c3 = static_cast<uint32_t>(product_a);
    c0 = next0;
    c2 = next2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  // The int32 bit pattern folded onto [0, 2**31 - 1] (x < 0 -> -x - 1), scaled by the largest float below 2**-31.
  int32_t folded = static_cast<int32_t>(c0);
  if (folded < 0) folded = -(folded + 1);
  return static_cast<float>(folded) * 4.6566127342e-10f;
}

}  // namespace kernels
