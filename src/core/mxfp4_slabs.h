// The MXFP4 layout of the Hopper main loop (issue 22): expert weights in slabs of 64 rows (one
// wgmma's M) and steps of 64 k, each slab step's codes one contiguous 2 KB run and its scales one
// 128-byte run, so a chunk of steps is one bulk copy, and each consumer thread's 32 codes of a step
// are 16 contiguous bytes that decode (decode_e2m1x8_strided) straight into its wgmma A fragments.
//
// repack_mxfp4: blocks [E, N, K/32, 16], scales [E, N, K/32] (the checkpoint layout) ->
// codes [E, ceil(N/64), ceil(K/64), 2048], scales [E, ceil(N/64), ceil(K/64), 128]. Rows past N
// and k past K hold code 0 and scale byte 127 (value 0; a scale of 255 would make them NaN).
//
// A slab step's codes: thread (warp w, lane 4g + t) of the consumer warpgroup owns bytes
// 512 w + 16 (4g + t) .. +15, four words; word q covers row 16 w + g + 8 (q % 2) of the slab and
// the 32-block q / 2 of the step; nibble i + 4h of the word (i < 4, h < 2) is the code at
// k = 32 (q / 2) + 16 (i / 2) + 8 (i % 2) + 2t + h: wgmma's A fragment (mma.sync's m16n8k16 A
// layout) of k16 step 2 (q / 2) + i / 2, register 2 (i % 2) + q % 2, element h, with the (i, i + 4)
// nibble pairs decode_e2m1x8_strided makes. A slab step's scales: byte 2r + b is row r's scale of
// the step's 32-block b.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace moekit::mxfp4_slabs {

constexpr int kRows = 64;          // weight rows a slab
constexpr int kStepK = 64;         // k a step
constexpr int kCodeBytes = 2048;   // a slab step's codes
constexpr int kScaleBytes = 128;   // a slab step's scales
constexpr uint8_t kPadScale = 127;

MOEKIT_HD int64_t slabs(int64_t N) { return (N + kRows - 1) / kRows; }
MOEKIT_HD int64_t steps(int64_t K) { return (K + kStepK - 1) / kStepK; }

// The slab row and step k whose code byte `o` of a slab step holds in its low (high = 0) or high
// nibble.
MOEKIT_HD void code_source(int o, int high, int& row, int& k) {
  const int warp = o / 512, lane = o / 16 % 32, q = o / 4 % 4, p = 2 * (o % 4) + high;  // p = i + 4h
  const int i = p % 4, h = p / 4, g = lane / 4, t = lane % 4;
  row = 16 * warp + g + 8 * (q % 2);
  k = 32 * (q / 2) + 16 * (i / 2) + 8 * (i % 2) + 2 * t + h;
}

// Byte `o` of slab step (slab, step) of one expert from its checkpoint blocks [N, K/32, 16] and
// scales [N, K/32]: the readable definition both backends run.
MOEKIT_HD uint8_t code_byte(const uint8_t* blocks, int64_t N, int64_t K, int64_t slab, int64_t step, int o) {
  uint8_t out = 0;
  for (int high = 0; high < 2; ++high) {
    int r, k;
    code_source(o, high, r, k);
    const int64_t row = slab * kRows + r, col = step * kStepK + k;
    if (row < N && col < K) {
      const uint8_t byte = blocks[row * (K / 2) + col / 2];
      out |= static_cast<uint8_t>(((col % 2 ? byte >> 4 : byte) & 0xf) << (4 * high));
    }
  }
  return out;
}

MOEKIT_HD uint8_t scale_byte(const uint8_t* scales, int64_t N, int64_t K, int64_t slab, int64_t step, int o) {
  const int64_t row = slab * kRows + o / 2, block = step * 2 + o % 2;
  return row < N && block < K / 32 ? scales[row * (K / 32) + block] : kPadScale;
}

}  // namespace moekit::mxfp4_slabs
