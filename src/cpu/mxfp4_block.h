// One MXFP4 block on the host: its 16 code bytes and scale byte -> 32 floats, e2m1_to_float's
// values (from a table of the 16) times the scale. The CPU backend's inner loop on the weights.
#pragma once

#include <array>
#include <cstdint>

#include "../core/mxfp4.h"

namespace moekit::cpu {

inline void decode_mxfp4_block(const uint8_t* codes, uint8_t scale_byte, float* out) {
  static const std::array<float, 16> kValues = [] {
    std::array<float, 16> v{};
    for (int c = 0; c < 16; ++c) v[c] = mxfp4::e2m1_to_float(static_cast<uint8_t>(c));
    return v;
  }();
  const float scale = mxfp4::e8m0_to_float(scale_byte);
  for (int i = 0; i < mxfp4::kBytesPerBlock; ++i) {
    out[2 * i] = kValues[codes[i] & 0xf] * scale;
    out[2 * i + 1] = kValues[codes[i] >> 4] * scale;
  }
}

}  // namespace moekit::cpu
