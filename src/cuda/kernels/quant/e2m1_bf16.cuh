// MXFP4 -> bf16 in registers (Hopper has no e2m1 conversion instruction), two ways:
// - strided pairs for kernels free to permute k: an e2m1 code's magnitude bits placed at bf16 bits
//   8..6 (sign at 15) read as (e2m1 value) * 2^-126, exactly, subnormals included; one or two
//   power-of-two multiplies then apply the 2^-126 and the block's e8m0 scale, also exactly (or to
//   the same inf/NaN as the CPU's float math); the codes come from a checkpoint word's nibbles or,
//   cheaper, from a word of repack_mxfp4's slabs, whose bits already lie near those places;
// - memory order, through a per-block table of the 8 scaled magnitudes and byte permutes: fewer
//   instructions per code when a thread decodes a whole block.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../../../core/mxfp4_slabs.h"

namespace moekit::cuda {

// The bf16 multipliers for scale byte s: value = decoded * 2^(s-1), and 2^(s-1) is a bf16 up to
// s = 128; larger scales take two steps, 2^126 then 2^(s-127) (s = 255, NaN, stays NaN). For
// s <= 128 the second multiplier is 1 (exact, subnormals included), so a warp may apply it to
// all its lanes when any needs it, and skip it, uniformly, when none does. bf16x2 bit patterns.
// Where the caller knows s <= 128 (warp_needs_second_step false for its warp): one multiply-add.
__device__ __forceinline__ uint32_t mxfp4_multiplier_upto_128(uint32_t s) { return ((s + 126u) << 7) * 0x10001u; }
__device__ __forceinline__ uint32_t mxfp4_first_multiplier(uint32_t s) {
  return s > 128 ? mxfp4_multiplier_upto_128(127) : mxfp4_multiplier_upto_128(s);  // 2^126 past 2^127
}
__device__ __forceinline__ uint32_t mxfp4_second_multiplier(uint32_t s) {
  return (s <= 128 ? 0x3f80u : (s == 255 ? 0x7fc0u : s << 7)) * 0x10001u;
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  __nv_bfloat162 r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<uint32_t*>(&r);
}

// The codes at bits 3..0 and 19..16 of `c` (shift 0) or 7..4 and 23..20 (shift 4) -> bf16x2
// before scaling. One multiply copies each masked code to bits 9..6 and 15..12 of its half
// (the two copies cannot carry into each other); the mask keeps the magnitude of the first copy
// and the sign of the second. A mask, a multiply (on the FMA pipe) and a mask: the logic pipe,
// which the decode fills, takes two instructions where shifts would take four.
template <int kShift>
__device__ __forceinline__ uint32_t e2m1_pair_bits(uint32_t c) {
  static_assert(kShift == 0 || kShift == 4, "codes 0 and 4, or 1 and 5, of a 16-bit half");
  return ((c & (0x000f000fu << kShift)) * ((0x1040u) >> kShift)) & 0x81c081c0u;
}

// 8 codes (one word, low nibble first) -> bf16x2 registers holding elements (0,4), (1,5),
// (2,6), (3,7): the cheapest pairing, for kernels free to permute k. Only the first multiply:
// the caller applies the second (apply_second_step) when a lane of its warp needs it.
__device__ __forceinline__ void decode_e2m1x8_strided(uint32_t c, uint32_t first, uint32_t (&r)[4]) {
  r[0] = bf16x2_mul(e2m1_pair_bits<0>(c), first);
  r[1] = bf16x2_mul(e2m1_pair_bits<4>(c), first);
  r[2] = bf16x2_mul(e2m1_pair_bits<0>(c >> 8), first);
  r[3] = bf16x2_mul(e2m1_pair_bits<4>(c >> 8), first);
}

// A word of repack_mxfp4's slabs (8 codes whose bits lie where the decode wants them:
// mxfp4_slabs::pair_bits) -> bf16x2 registers holding its pairs 0..3 (codes (0,4), (1,5), (2,6),
// (3,7), as decode_e2m1x8_strided pairs a checkpoint word's), 8 integer instructions where a
// checkpoint word takes 13. Only the first multiply, as there.
__device__ __forceinline__ void decode_e2m1x8_slab(uint32_t c, uint32_t first, uint32_t (&r)[4]) {
  r[0] = bf16x2_mul(mxfp4_slabs::pair_bits<0>(c), first);
  r[1] = bf16x2_mul(mxfp4_slabs::pair_bits<1>(c), first);
  r[2] = bf16x2_mul(mxfp4_slabs::pair_bits<2>(c), first);
  r[3] = bf16x2_mul(mxfp4_slabs::pair_bits<3>(c), first);
}

// 8 consecutive bf16 -> bf16x2 registers holding elements (0,4), (1,5), (2,6), (3,7), the
// pairing decode_e2m1x8_strided gives the weights.
__device__ __forceinline__ void pair_bf16x8(const uint4 v, uint32_t (&r)[4]) {
  r[0] = __byte_perm(v.x, v.z, 0x5410);
  r[1] = __byte_perm(v.x, v.z, 0x7632);
  r[2] = __byte_perm(v.y, v.w, 0x5410);
  r[3] = __byte_perm(v.y, v.w, 0x7632);
}

// True for every lane when any lane of the warp holds a scale above 128 (two multiplies).
__device__ __forceinline__ bool warp_needs_second_step(bool lane_needs) { return __any_sync(0xffffffffu, lane_needs); }

__device__ __forceinline__ void apply_second_step(uint32_t (&r)[4], uint32_t second) {
#pragma unroll
  for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(r[i], second);
}

// For decoding a whole block in memory order: the 8 e2m1 magnitudes times the block's scale,
// split into the low and high bytes of their bf16 patterns, so one byte permute looks up 4 codes.
// The products are exact (or the same inf/NaN as the CPU's float math): magnitudes are small
// normals and the scale a power of two (a bf16 subnormal for byte 0).
struct E2m1Table {
  uint32_t lo0, lo1, hi0, hi1;  // bytes of magnitudes 0..3 and 4..7
};

__device__ __forceinline__ E2m1Table e2m1_table(uint32_t s) {
  const uint32_t scale = (s == 255 ? 0x7fc0u : (s == 0 ? 0x0040u : s << 7)) * 0x10001u;  // 2^(s-127)
  const uint32_t m01 = bf16x2_mul(0x3f000000u, scale);  // (0, 0.5)
  const uint32_t m23 = bf16x2_mul(0x3fc03f80u, scale);  // (1, 1.5)
  const uint32_t m45 = bf16x2_mul(0x40404000u, scale);  // (2, 3)
  const uint32_t m67 = bf16x2_mul(0x40c04080u, scale);  // (4, 6)
  return {__byte_perm(m01, m23, 0x6420), __byte_perm(m45, m67, 0x6420), __byte_perm(m01, m23, 0x7531),
          __byte_perm(m45, m67, 0x7531)};
}

// 8 codes (one word, low nibble first) -> bf16x2 registers holding elements (0,1), (2,3), (4,5),
// (6,7): memory order. Magnitudes are looked up 4 at a time (selector nibbles 0..7: bit 3 of a
// byte_perm selector would replicate a sign); the code's sign bit becomes bit 7 of the high byte.
__device__ __forceinline__ void decode_e2m1x8(uint32_t c, const E2m1Table& t, uint32_t (&r)[4]) {
  const uint32_t c4 = c << 4;  // puts the signs of even elements at bit 7 of their byte
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const uint32_t sel = (half ? c >> 16 : c) & 0x7777u;
    const uint32_t lo = __byte_perm(t.lo0, t.lo1, sel);
    const uint32_t signs = __byte_perm(c4, c, half ? 0x7362 : 0x5140);
    const uint32_t hi = __byte_perm(t.hi0, t.hi1, sel) | (signs & 0x80808080u);
    r[2 * half] = __byte_perm(lo, hi, 0x5140);
    r[2 * half + 1] = __byte_perm(lo, hi, 0x7362);
  }
}

// One whole MXFP4 block (16 code bytes: 32 codes, low nibble first) and its scale byte -> 32
// bf16 in memory order: store(i, word) takes elements 8i .. 8i + 7 as one 16-byte word, each as
// soon as it is decoded (for kernels that decode into a shared-memory weight tile).
template <class Store>
__device__ __forceinline__ void decode_e2m1_block(const uint4 codes, uint32_t scale, Store&& store) {
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
  const E2m1Table table = e2m1_table(scale);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    uint32_t v[4];
    decode_e2m1x8(words[i], table, v);
    store(i, make_uint4(v[0], v[1], v[2], v[3]));
  }
}

}  // namespace moekit::cuda
