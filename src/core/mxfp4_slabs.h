// The MXFP4 layout of the Hopper main loop (issue 22): expert weights in slabs of 64 rows (one
// wgmma's M) and steps of 64 k, each slab step's codes one contiguous 2 KB run and its scales one
// 128-byte run, so a chunk of steps is one bulk copy, and each consumer thread's 32 codes of a step
// are four contiguous words whose bits sit where the bf16 decode wants them (pair_bits), so they
// decode straight into its wgmma A fragments.
//
// repack_mxfp4: blocks [E, N, K/32, 16], scales [E, N, K/32] (the checkpoint layout) ->
// codes [E, ceil(N/64), ceil(K/64), 2048], scales [E, ceil(N/64), ceil(K/64), 128]. Rows past N
// and k past K hold code 0 and scale byte 127 (value 0; a scale of 255 would make them NaN).
//
// A slab step's codes are 512 32-bit words, little-endian. Thread (warp w, lane 4g + t) of the
// consumer warpgroup owns words 128 w + 4 (4g + t) + q, q < 4; word q covers row 16 w + g + 8 (q % 2)
// of the slab and the 32-block q / 2 of the step; its code p = i + 4h (i < 4, h < 2) is the code at
// k = 32 (q / 2) + 16 (i / 2) + 8 (i % 2) + 2t + h: wgmma's A fragment (mma.sync's m16n8k16 A
// layout) of k16 step 2 (q / 2) + i / 2, register 2 (i % 2) + q % 2, element h. Codes i and i + 4
// make pair i, one bf16x2 register, and their bits lie where pair_bits takes them (code_bit).
// A slab step's scales: byte 2r + b is row r's scale of the step's 32-block b.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace moekit::mxfp4_slabs {

constexpr int kRows = 64;          // weight rows a slab
constexpr int kStepK = 64;         // k a step
constexpr int kCodeBytes = 2048;   // a slab step's codes
constexpr int kCodeWords = kCodeBytes / 4;
constexpr int kScaleBytes = 128;   // a slab step's scales
constexpr uint8_t kPadScale = 127;

MOEKIT_HD int64_t slabs(int64_t N) { return (N + kRows - 1) / kRows; }
MOEKIT_HD int64_t steps(int64_t K) { return (K + kStepK - 1) / kStepK; }

// The slab row and step k of code p (0..7) of word `word` (0..511) of a slab step.
MOEKIT_HD void code_source(int word, int p, int& row, int& k) {
  const int warp = word / 128, lane = word / 4 % 32, q = word % 4, i = p % 4, h = p / 4, g = lane / 4, t = lane % 4;
  row = 16 * warp + g + 8 * (q % 2);
  k = 32 * (q / 2) + 16 * (i / 2) + 8 * (i % 2) + 2 * t + h;
}

// The decode: an e2m1 code's bits 0..2 (mantissa, exponent) at bf16 bits 6..8 and its sign at 15
// read as (its value) * 2^-126, exactly, subnormals included (e2m1_bf16.cuh's multipliers then
// apply 2^126 and the block's scale). kBf16Bits: those bits of both halves of a bf16x2 register.
constexpr uint32_t kBf16Bits = 0x81c081c0u;
// Pair 0 lies at those bits; pairs 1 and 2 at them rotated right by 10 and 13 bits; pair 3, in the
// 8 bits left, at bits 4, 0, 1, 3 (of the code's bits 0..3) of each half, where one multiply by
// 2^2 + 2^7 + 2^12 puts each at its bf16 bit with no carry into another (exhaustively checked:
// tests/cpp/mxfp4_test.cpp). 8 instructions a word, where nibbles took 13: no arrangement in
// which all four pairs are rotations of pair 0 exists (a search over every pair of rotations).
constexpr int kRotation1 = 10, kRotation2 = 13;
constexpr uint32_t kPair3Mask = 0x001b001bu, kPair3Multiplier = 0x1084u;

// Where bit b (0: mantissa, 1 and 2: exponent, 3: sign) of code p of a word lies.
MOEKIT_HD int code_bit(int p, int b) {
  const int i = p % 4, h = p / 4;
  const int bf16_bit = (b == 3 ? 15 : 6 + b) + 16 * h;
  const int pair3_bit[4] = {4, 0, 1, 3};
  switch (i) {
    case 0: return bf16_bit;
    case 1: return (bf16_bit - kRotation1) & 31;
    case 2: return (bf16_bit - kRotation2) & 31;
    default: return pair3_bit[b] + 16 * h;
  }
}

MOEKIT_HD uint32_t rotate_left(uint32_t c, int r) {
#if defined(__CUDA_ARCH__)
  return __funnelshift_l(c, c, r);
#else
  return (c << r) | (c >> (32 - r));
#endif
}

// Pair i of a word (codes i and i + 4) as a bf16x2 register before scaling.
template <int I>
MOEKIT_HD uint32_t pair_bits(uint32_t c) {
  static_assert(I >= 0 && I < 4, "four pairs a word");
  if constexpr (I == 0) return c & kBf16Bits;
  else if constexpr (I == 1) return rotate_left(c, kRotation1) & kBf16Bits;
  else if constexpr (I == 2) return rotate_left(c, kRotation2) & kBf16Bits;
  else return ((c & kPair3Mask) * kPair3Multiplier) & kBf16Bits;
}

// Word `word` of slab step (slab, step) of one expert from its checkpoint blocks [N, K/32, 16]
// (low nibble: the even k): the readable definition both backends run.
MOEKIT_HD uint32_t code_word(const uint8_t* blocks, int64_t N, int64_t K, int64_t slab, int64_t step, int word) {
  uint32_t out = 0;
  for (int p = 0; p < 8; ++p) {
    int r, k;
    code_source(word, p, r, k);
    const int64_t row = slab * kRows + r, col = step * kStepK + k;
    if (row < N && col < K) {
      const uint8_t byte = blocks[row * (K / 2) + col / 2];
      const uint32_t code = (col % 2 ? byte >> 4 : byte) & 0xf;
      for (int b = 0; b < 4; ++b) out |= ((code >> b) & 1u) << code_bit(p, b);
    }
  }
  return out;
}

MOEKIT_HD uint8_t scale_byte(const uint8_t* scales, int64_t N, int64_t K, int64_t slab, int64_t step, int o) {
  const int64_t row = slab * kRows + o / 2, block = step * 2 + o % 2;
  return row < N && block < K / 32 ? scales[row * (K / 32) + block] : kPadScale;
}

}  // namespace moekit::mxfp4_slabs
