// MXFP4 -> bf16 in registers by bit manipulation. An e2m1 code's magnitude bits placed at bf16
// bits 8..6 (sign at 15) read as (e2m1 value) * 2^-126, exactly, subnormals included; one or two
// power-of-two multiplies then apply the 2^-126 and the block's e8m0 scale, also exactly (or to
// the same inf/NaN as the CPU's float math). Hopper has no e2m1 conversion instruction.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace moekit::cuda {

// The bf16 multipliers for scale byte s: value = decoded * 2^(s-1), and 2^(s-1) is a bf16 up to
// s = 128; larger scales take two steps, 2^126 then 2^(s-127) (s = 255, NaN, stays NaN).
struct Mxfp4Multiplier {
  uint32_t first, second;  // bf16x2 bit patterns; second is used only when two_steps
  bool two_steps;
};

__device__ __forceinline__ Mxfp4Multiplier mxfp4_multiplier(uint32_t s) {
  Mxfp4Multiplier m;
  m.two_steps = s > 128;
  const uint32_t first = m.two_steps ? 253u : s + 126u;  // bf16 exponent field
  const uint32_t second = s == 255 ? 0x7fc0u : s << 7;
  m.first = (first << 7) * 0x10001u;
  m.second = second * 0x10001u;
  return m;
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// Codes in bits 3..0 and 19..16 of `c` -> bf16x2 before scaling.
__device__ __forceinline__ uint32_t e2m1_pair_bits(uint32_t c) {
  return ((c << 6) & 0x01c001c0u) | ((c << 12) & 0x80008000u);
}

__device__ __forceinline__ void apply_multiplier(uint32_t (&r)[4], const Mxfp4Multiplier& m) {
#pragma unroll
  for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(r[i], m.first);
  if (m.two_steps) {
#pragma unroll
    for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(r[i], m.second);
  }
}

// 8 codes (one word, low nibble first) -> bf16x2 registers holding elements (0,4), (1,5),
// (2,6), (3,7): the cheapest pairing, for kernels free to permute k.
__device__ __forceinline__ void decode_e2m1x8_strided(uint32_t c, const Mxfp4Multiplier& m, uint32_t (&r)[4]) {
  r[0] = e2m1_pair_bits(c);
  r[1] = e2m1_pair_bits(c >> 4);
  r[2] = e2m1_pair_bits(c >> 8);
  r[3] = e2m1_pair_bits(c >> 12);
  apply_multiplier(r, m);
}

// 8 codes -> bf16x2 registers holding elements (0,1), (2,3), (4,5), (6,7): memory order.
__device__ __forceinline__ void decode_e2m1x8(uint32_t c, const Mxfp4Multiplier& m, uint32_t (&r)[4]) {
  const uint32_t lo = c & 0x0f0f0f0fu, hi = (c >> 4) & 0x0f0f0f0fu;  // even and odd elements
  r[0] = e2m1_pair_bits(__byte_perm(lo, hi, 0x4400));
  r[1] = e2m1_pair_bits(__byte_perm(lo, hi, 0x5511));
  r[2] = e2m1_pair_bits(__byte_perm(lo, hi, 0x6622));
  r[3] = e2m1_pair_bits(__byte_perm(lo, hi, 0x7733));
  apply_multiplier(r, m);
}

}  // namespace moekit::cuda
